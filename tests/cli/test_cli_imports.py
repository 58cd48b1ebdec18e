"""The command line imports only what a command needs: printing help or sending one
request to the service must not load the service itself (web framework, kernels, OTA)."""

import json
import subprocess
import sys

SERVICE_MODULES = ("appliance.runtime.main", "quart", "numba", "appliance.kernels", "appliance.ota")

PROBE = """
import json, sys
from appliance.cli import build_parser
try:
    build_parser().parse_args(sys.argv[1:])
except SystemExit:
    pass
roots = ("appliance", "quart", "numba")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in roots)))
"""


def loaded_after(*argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_and_parsing_load_no_part_of_the_service():
    for argv in (["--help"], ["tasks", "--help"], ["config", "get", "a/b/c/d"], ["status"]):
        loaded = loaded_after(*argv)
        assert "appliance.cli" in loaded  # the probe really imported the command line
        for module in SERVICE_MODULES:
            assert module not in loaded, (argv, module)


def test_the_runtime_package_still_offers_its_names():
    import appliance.runtime as runtime
    from appliance.runtime.errors import StartupError
    from appliance.runtime.main import run

    assert runtime.run is run and runtime.StartupError is StartupError
    try:
        runtime.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
