"""What the host launchers need to know about where their kernels will run."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1: kernels run in Triton's CPU interpreter, so small blocks suffice."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def multiprocessor_count() -> int:
    """SMs of the current device, from Triton's active driver (the compile gate's stub reports its target's)."""
    from triton.runtime import driver

    device = driver.active.get_current_device()
    return driver.active.utils.get_device_properties(device)["multiprocessor_count"]
