"""`python -m atlas_fast.info`: what this installation can do, for bug reports.

Prints versions, devices, whether the native module loaded and how it was
built, and which backend each op with a Triton kernel would use on each device.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

from atlas_fast import _dispatch, _ext

__all__ = ["report"]

_PACKAGES = ("atlas_fast", "torch", "triton", "transformers", "faiss-cpu", "numpy")


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def _backend_for(op: str, device: torch.device) -> str:
    try:
        return _dispatch.choose_backend(op, device)
    except (_dispatch.TritonUnavailable, ValueError) as error:
        return f"error: {error}"


def report() -> str:
    """The report as text, one `key: value` line per fact."""
    lines = [f"python: {platform.python_version()} ({platform.machine()}, {platform.system()})"]
    lines += [f"{name}: {_package_version(name)}" for name in _PACKAGES]
    lines.append(f"torch threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        lines += [f"cuda device {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        lines.append("cuda: not available")
    build = _ext.build_info()
    if build is None:
        try:
            _ext.native()
        except _ext.ExtensionUnavailable as error:
            lines.append(f"_C: not loaded: {error}")
    else:
        paths = build.pop("simd_paths")
        lines.append("_C: loaded; " + ", ".join(f"{key}={value}" for key, value in sorted(build.items())))
        lines.append("DocumentIndex SIMD path: " + ", ".join(f"{dtype} {path}" for dtype, path in paths.items()))
        try:
            _ext.native()
        except _ext.SimdUnavailable as error:
            lines.append(f"ATLAS_FAST_SIMD: error: {error}")
    lines.append(f"{_dispatch.BACKEND_ENV}: {_dispatch.requested_backend()}")
    for device in _devices():
        reason = _dispatch.triton_status(device)
        lines.append(f"triton on {device.type}: {'usable' if reason is None else reason}")
        lines += [f"  {op} on {device.type}: {_backend_for(op, device)}" for op in _dispatch.KERNEL_OPS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
