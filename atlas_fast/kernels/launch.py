"""The GPU the host launchers compile for: its SM count (whether Triton interprets: atlas_fast._dispatch)."""

from __future__ import annotations


def multiprocessor_count() -> int:
    """SMs of the current device, from Triton's active driver (the compile gate's stub reports its target's)."""
    from triton.runtime import driver

    device = driver.active.get_current_device()
    return driver.active.utils.get_device_properties(device)["multiprocessor_count"]
