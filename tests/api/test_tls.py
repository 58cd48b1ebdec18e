"""Optional TLS from settings: HTTPS with HSTS; a bad certificate is a settings error."""

import json
import ssl
import subprocess
import time

import httpx


def make_certificate(directory):
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_https_with_hsts(start_appliance, tmp_path):
    cert, key = make_certificate(tmp_path)
    config = tmp_path / "appliance.toml"
    config.write_text(f'[http]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    appliance = start_appliance(config=config, ready=False)
    appliance.notify.wait_for("READY", "1")
    url = json.loads((appliance.data_dir / "run" / "endpoints.json").read_text())["http"]
    assert url.startswith("https://127.0.0.1:")
    token = (appliance.data_dir / "admin.token").read_text().strip()
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=url, verify=trust, timeout=10) as https:
        health = https.get("/api/v1/health")
        assert health.status_code == 200
        assert health.headers["strict-transport-security"].startswith("max-age=")
        session = https.post("/api/v1/auth/session", headers={"Authorization": f"Bearer {token}"})
        assert session.status_code == 201
        assert "secure" in session.headers["set-cookie"].lower()
    plain = url.replace("https://", "http://")
    deadline = time.monotonic() + 5
    refused = False
    while not refused and time.monotonic() < deadline:
        try:
            httpx.get(f"{plain}/api/v1/health", timeout=2)
        except httpx.HTTPError:
            refused = True
    assert refused, "plain HTTP must not be served when TLS is on"
    assert appliance.stop() == 0


def test_unloadable_certificate_exits_78(cli, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = tmp_path / "appliance.toml"
    config.write_text(f'[http]\ntls_cert = "{bad}"\n')
    result = cli(
        "run", "--config", str(config), "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:0"
    )
    assert result.returncode == 78
    assert "http.tls_cert" in result.stderr
