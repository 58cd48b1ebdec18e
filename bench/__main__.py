"""`python -m bench [NAME ...]`: run the benchmarks, print the table, write the results.

Each benchmark measures its figure and its reference in the same run on the same machine.
A missed target is printed as MISSED; the exit status is 0 regardless (a measurement, not a
test), except for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from bench import (
    bus_bench,
    config_bench,
    http_bench,
    kernels_bench,
    ota_bench,
    startup_bench,
    store_bench,
    tasks_bench,
)
from bench.common import RESULTS, Figure, disk_base, log

# name -> (run function, hard time limit in seconds)
BENCHMARKS: dict[str, tuple[Callable[[], list[Figure]], int]] = {
    "store": (store_bench.run, 60),
    "kernels": (kernels_bench.run, 120),
    "http": (http_bench.run, 150),
    "tasks": (tasks_bench.run, 120),
    "startup": (startup_bench.run, 150),
    "config": (config_bench.run, 300),
    "bus": (bus_bench.run, 300),
    "ota": (ota_bench.run, 300),
}


class BenchmarkTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchmarkTimeout("the benchmark ran past its time limit")


def run_one(name: str) -> tuple[list[Figure], str | None, float]:
    fn, limit = BENCHMARKS[name]
    log(f"{name}: start (limit {limit} s)")
    began = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(limit)
    try:
        return fn(), None, time.perf_counter() - began
    except Exception as exc:
        log(f"{name}: FAILED: {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return [], f"{type(exc).__name__}: {exc}", time.perf_counter() - began
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(figures: list[Figure], errors: dict[str, str]) -> str:
    header = ("benchmark", "figure", "value", "reference", "ratio", "target", "result")
    rows: list[tuple[str, ...]] = []
    for f in figures:
        reference = "—"
        if f.reference is not None:
            reference = f"{_number(f.reference, f.unit)} ({f.reference_name})"
        result = "info" if f.passed is None else ("pass" if f.passed else "MISSED")
        ratio = "—" if f.ratio is None else f"{f.ratio:.3g}x"
        rows.append(
            (f.benchmark, f.name, _number(f.value, f.unit), reference, ratio, f.target, result)
        )
    for name in errors:
        rows.append((name, "(benchmark failed)", "—", "—", "—", "—", "ERROR"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
    missed = [f"{f.benchmark}: {f.name}" for f in figures if f.passed is False]
    if missed:
        out.append("")
        out.append(f"MISSED {len(missed)} target(s): " + "; ".join(missed))
    for name, error in errors.items():
        out.append(f"ERROR in {name}: {error}")
    return "\n".join(out)


def write_results(document: dict[str, Any]) -> list[str]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(document["started_unix"]))
    paths = [RESULTS / "latest.json", RESULTS / f"{stamp}.json"]
    for path in paths:
        path.write_text(text)
    return [str(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)

    started = time.time()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    for name in names:
        found, error, seconds = run_one(name)
        figures.extend(found)
        durations[name] = round(seconds, 1)
        if error is not None:
            errors[name] = error

    base, fs_type = disk_base()
    document = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "started_unix": started,
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "scratch": f"{base} ({fs_type})",
        },
        "benchmarks": names,
        "durations_s": durations,
        "figures": [f.as_dict() for f in figures],
        "errors": errors,
    }
    paths = write_results(document)
    print()
    print(table(figures, errors))
    print()
    print(f"results: {', '.join(paths)}  ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
