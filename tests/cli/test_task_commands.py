"""`appliance task submit|get|cancel` against the running service."""

import json


def test_submit_wait_get_and_errors(cli, appliance, tmp_path):
    data = ["--data-dir", str(appliance.data_dir)]
    waited = cli(
        "task",
        "submit",
        "ewma",
        "--input",
        "[1, 2, 3]",
        "--params",
        '{"alpha": 0.5}',
        "--wait",
        *data,
    )
    assert waited.returncode == 0, waited.stderr
    result = json.loads(waited.stdout)
    assert result["outputs"] == {"y": [1.0, 1.5, 2.25], "state": 2.25}

    source = tmp_path / "input.json"
    source.write_text("[3, 4, 3, 4]")
    submitted = cli(
        "task",
        "submit",
        "rms",
        "--input",
        f"@{source}",
        "--priority",
        "9",
        "--key",
        "cli-once",
        *data,
        env={"APPLIANCE_TOKEN": appliance.token},
    )
    assert submitted.returncode == 0, submitted.stderr
    task = json.loads(submitted.stdout)
    assert task["priority"] == 9 and task["idempotency_key"] == "cli-once"
    shown = cli("task", "get", task["id"], "--url", appliance.url, "--token", appliance.token)
    assert json.loads(shown.stdout)["id"] == task["id"]

    piped = cli("task", "submit", "rms", "--input", "-", "--wait", *data, input="[6, 8]")
    assert json.loads(piped.stdout)["outputs"]["rms"] > 7

    bad = cli("task", "submit", "rms", "--input", "[1]", "--params", '{"x": 1}', *data)
    assert bad.returncode == 1 and "invalid_params" in bad.stderr
    garbage = cli("task", "submit", "rms", "--input", "[1,", *data)
    assert garbage.returncode == 2 and "--input is not valid JSON" in garbage.stderr
    unknown = cli("task", "cancel", "no-such-task", *data)
    assert unknown.returncode == 1 and "task_not_found" in unknown.stderr
    viewer = cli("token", "create", "--name", "v", "--role", "viewer", *data).stdout.strip()
    refused = cli("task", "submit", "rms", "--input", "[1]", "--token", viewer, *data)
    assert refused.returncode == 1 and "forbidden" in refused.stderr
