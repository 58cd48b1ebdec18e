"""Loading the kernel library: numba's cache under the data dir, compiled off the loop.

numba decides where a function's cache lives when the function is decorated, so the cache
directory is set before the kernel modules are imported; `load_kernels` does both. Then
`warm_all` compiles every signature in a worker thread (or loads it from the cache: a warm
restart compiles nothing), reporting progress, so no request ever waits for the compiler.
Neither imports SciPy, and `release_compiler_pages` gives back what only the loading
needed (see appliance/kernels/footprint.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from appliance.kernels.footprint import import_lowering_without_scipy, scipy_hidden
from appliance.kernels.registry import registered
from appliance.kernels.spec import Kernel

KERNEL_MODULES = (
    "appliance.kernels.stats",
    "appliance.kernels.filters",
    "appliance.kernels.spectral",
    "appliance.kernels.events",
    "appliance.kernels.shape",
)


def load_kernels(cache_dir: Path | None) -> dict[str, Kernel]:
    """Import every kernel module with numba caching into `cache_dir`.

    An existing `$NUMBA_CACHE_DIR` (set by the systemd unit) wins over `cache_dir`."""
    with scipy_hidden():  # `import numba` would import it only to check its version
        if cache_dir is not None and not os.environ.get("NUMBA_CACHE_DIR"):
            cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["NUMBA_CACHE_DIR"] = str(cache_dir)
            import numba.core.config

            numba.core.config.CACHE_DIR = str(cache_dir)
        for module in KERNEL_MODULES:
            importlib.import_module(module)
    return registered()


def warm_all(kernels: dict[str, Kernel], progress: Callable[[int, int, str], None]) -> None:
    """Compile every kernel, calling `progress(done, total, name)` after each. Blocking."""
    import_lowering_without_scipy()
    total = len(kernels)
    for done, (name, kernel) in enumerate(sorted(kernels.items()), start=1):
        kernel.warm()
        progress(done, total, name)
