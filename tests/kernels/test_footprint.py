"""Giving back the loader's memory: which pages may be dropped, and that kernels (and the
compiler) still work afterwards, in a process that never imports SciPy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from appliance.kernels.footprint import LLVM_LIBRARY, Mapping, clean_mappings, parse_smaps

LIB = f"/venv/site-packages/llvmlite/binding/{LLVM_LIBRARY}"
SMAPS = f"""\
7f0000000000-7f0000365000 r--p 00000000 fe:00 5333307                    {LIB}
Size:               3476 kB
Rss:                3476 kB
Shared_Clean:       3476 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000365000-7f0005394000 r-xp 00365000 fe:00 5333307                    {LIB}
Size:              82108 kB
Rss:               40000 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0005394000-7f0009677000 r--p 05394000 fe:00 5333307                    {LIB}
Size:              68492 kB
Rss:                   0 kB
Private_Dirty:         0 kB
7f0009677000-7f000983c000 r--p 09677000 fe:00 5333307                    {LIB}
Size:               1812 kB
Rss:                1792 kB
Private_Dirty:      1792 kB
7f000983c000-7f0009865000 rw-p 0983c000 fe:00 5333307                    {LIB}
Rss:                 156 kB
Private_Dirty:       156 kB
7f0009865000-7f0009866000 r--p 00000000 fe:00 5333308                    {LIB}.bak
Rss:                   4 kB
7f0009866000-7f0009867000 r-xp 00001000 fe:00 5333309                    /lib/libc.so.6
Rss:                   4 kB
7f0009867000-7f0009868000 r--p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
7f0009868000-7f0009869000 r--p 00000000 fe:00 5333307                    {LIB}
Rss:                   4 kB
Swap:                  4 kB
"""


def test_parse_smaps_reads_ranges_permissions_and_dirty_pages():
    mappings = parse_smaps(SMAPS)
    assert len(mappings) == 9
    assert mappings[0] == Mapping(0x7F0000000000, 0x7F0000365000, "r--p", LIB, 3476, 0)
    assert mappings[3].dirty_kib == 1792
    assert mappings[7] == Mapping(0x7F0009867000, 0x7F0009868000, "r--p", "", 4, 4)
    assert mappings[8].dirty_kib == 4  # swapped out: its bytes live only in swap


def test_only_clean_read_only_resident_mappings_of_the_library_are_chosen():
    chosen = clean_mappings(parse_smaps(SMAPS), LLVM_LIBRARY)
    # Not: the one with nothing resident, the RELRO one (dirty), the writable one, another
    # file, an anonymous mapping, one with a page in swap.
    assert [(m.perms, m.rss_kib) for m in chosen] == [("r--p", 3476), ("r-xp", 40000)]
    assert clean_mappings(parse_smaps(SMAPS), "libother.so") == []
    assert parse_smaps("") == []


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from appliance.kernels import load_kernels, release_compiler_pages, warm_all

    kernels = load_kernels(None)
    warm_all(kernels, lambda done, total, name: None)

    def outputs():
        results = {}
        for name, kernel in sorted(kernels.items()):
            params = kernel.check_params(kernel.example.get("params"))
            for dtype in kernel.inputs.dtypes:
                x = np.asarray(kernel.example["input"], dtype=dtype)
                results[f"{name}/{dtype}"] = repr(kernel.run(x, params))
        return results

    before = outputs()
    released = release_compiler_pages()
    after = outputs()

    from numba import njit  # the compiler still works: its pages come back on demand

    @njit
    def add_one(value):
        return value + 1

    print(json.dumps({
        "released_kib": released,
        "same": before == after,
        "compiled": add_one(41),
        "scipy": sorted(m for m in sys.modules if m.split(".")[0] == "scipy"),
    }))
    """
)


def test_kernels_and_the_compiler_work_after_release_and_scipy_is_never_imported():
    project = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(project)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=project, capture_output=True, check=True
    )
    report = json.loads(done.stdout.decode().splitlines()[-1])
    assert report["same"] is True
    assert report["compiled"] == 42
    assert report["released_kib"] > 1024  # LLVM's code was resident, now dropped
    assert report["scipy"] == []
