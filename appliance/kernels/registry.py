"""The kernel registry: every kernel module adds its kernels with `register`."""

from __future__ import annotations

from appliance.kernels.spec import Kernel

_KERNELS: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    if kernel.name in _KERNELS:
        raise ValueError(f"kernel {kernel.name!r} is registered twice")
    _KERNELS[kernel.name] = kernel
    return kernel


def registered() -> dict[str, Kernel]:
    return dict(_KERNELS)
