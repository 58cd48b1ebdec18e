"""The kernel library: numba-jitted signal kernels with parameter schemas.

`load_kernels(cache_dir)` imports every kernel (numba caching into `cache_dir`) and returns
them by name; `warm_all` compiles them off the event loop and `release_compiler_pages`
then gives back the compiler's memory. A `Kernel` checks its input and
parameters and runs; see docs/kernels.md for each kernel.
"""

from appliance.kernels.footprint import release_compiler_pages
from appliance.kernels.loader import load_kernels, warm_all
from appliance.kernels.params import ParamError
from appliance.kernels.spec import InputError, InputRules, Kernel

__all__ = [
    "InputError",
    "InputRules",
    "Kernel",
    "ParamError",
    "load_kernels",
    "release_compiler_pages",
    "warm_all",
]
