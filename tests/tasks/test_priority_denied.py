"""Under a seccomp filter that denies setpriority (as a stricter unit would), tasks still
run: at the loop's priority, with one warning."""

from __future__ import annotations

import ctypes
import platform
import time

import pytest

SETPRIORITY_X86_64 = 141


def deny_setpriority() -> None:
    """preexec_fn: a real kernel-enforced filter, setpriority -> EPERM, all else allowed."""

    class Filter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    program = (Filter * 4)(
        Filter(0x20, 0, 0, 0),  # load the syscall number
        Filter(0x15, 0, 1, SETPRIORITY_X86_64),  # setpriority?
        Filter(0x06, 0, 0, 0x00050000 | 1),  # then return EPERM
        Filter(0x06, 0, 0, 0x7FFF0000),  # else allow
    )
    libc = ctypes.CDLL(None, use_errno=True)
    fprog = Program(4, ctypes.cast(program, ctypes.POINTER(Filter)))
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter uses x86_64 syscall numbers")
def test_tasks_run_when_setpriority_is_denied(start_appliance):
    process = start_appliance(preexec_fn=deny_setpriority)
    with process.client(process.token) as http:
        ids = [
            http.post("/api/v1/tasks", json={"kernel": "rms", "input": [3.0, -3.0]}).json()["id"]
            for _ in range(3)
        ]
        done = [http.get(f"/api/v1/tasks/{i}", params={"wait": 30}).json() for i in ids]
    assert [task["state"] for task in done] == ["succeeded"] * 3
    assert [task["attempts"] for task in done] == [1, 1, 1]
    time.sleep(0.2)
    assert process.log().count("setpriority failed") == 1
