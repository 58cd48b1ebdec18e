"""The settings model: frozen sections, each field with its parser and embedded default.

Each field's `metadata["parse"]` turns a raw value (a TOML value or an environment string)
into the typed value or raises `ValueError` with a human reason; `SettingsError` then names
the key. Keys in `LIVE_KEYS` are applied on SIGHUP without a restart.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(Exception):
    """A settings value is missing, of the wrong type or out of range."""

    def __init__(self, key: str, reason: str, *, source: str = "") -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {key}{where}: {reason}")


@dataclass(frozen=True)
class Address:
    """A TCP listen address; port 0 picks a free port. `fd://N` is an inherited socket."""

    host: str
    port: int
    fd: int | None = None

    def __str__(self) -> str:
        if self.fd is not None:
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(raw: Any) -> Address:
    if not isinstance(raw, str):
        raise ValueError("expected a string HOST:PORT")
    text = raw.strip()
    if text.startswith("fd://"):
        number = text[5:]
        if not number.isdigit():
            raise ValueError(f"expected fd://N, got {raw!r}")
        return Address("", 0, fd=int(number))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    return Address(host, int(port))


def parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    return raw


def parse_path(raw: Any) -> Path | None:
    text = parse_str(raw)
    return Path(text).expanduser() if text else None


def parse_int(low: int, high: int):
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {raw!r}") from None
        if not isinstance(raw, int):
            raise ValueError(f"expected an integer, got {type(raw).__name__}")
        if not low <= raw <= high:
            raise ValueError(f"must be between {low} and {high}, got {raw}")
        return raw

    return parse


def parse_float(low: float, high: float):
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
        if not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ValueError(f"expected a finite number, got {raw!r}")
        if not low <= raw <= high:
            raise ValueError(f"must be between {low} and {high}, got {raw}")
        return float(raw)

    return parse


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_choice(*choices: str):
    def parse(raw: Any) -> str:
        text = parse_str(raw).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def parse_bus_urls(raw: Any) -> tuple[str, ...]:
    """`tcp://[TOKEN@]HOST:PORT` URLs: a list, or one comma-separated string (the
    environment). TOKEN, when given, is the far box's token for that link."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError("expected a list of tcp://HOST:PORT URLs")
    urls = []
    for item in items:
        text = parse_str(item).strip()
        if not text:
            continue
        if not text.startswith("tcp://"):
            raise ValueError(f"expected tcp://[TOKEN@]HOST:PORT, got {text.rpartition('@')[2]!r}")
        address = parse_address(text.removeprefix("tcp://").rpartition("@")[2])
        if address.port == 0 or not address.host:
            raise ValueError(f"a link needs a host and a port, got {text.rpartition('@')[2]!r}")
        urls.append(text)
    places = [url.rpartition("@")[2].removeprefix("tcp://") for url in urls]
    if len(set(places)) != len(places):
        raise ValueError("a link is listed twice")
    return tuple(urls)


def parse_labels(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object of strings: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError("expected a table of label = value strings")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("labels must map strings to strings")
        if not key or len(key) > 63 or len(value) > 255:
            raise ValueError(f"label {key!r} is empty or too long")
    return dict(raw)


def setting(default: Any, parse, doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class DeviceSettings:
    name: str = setting("", parse_str, "Device name; the hostname when empty.")
    labels: dict[str, str] = field(
        default_factory=dict, metadata={"parse": parse_labels, "doc": "Device labels."}
    )


@dataclass(frozen=True)
class DataSettings:
    dir: Path | None = setting(
        None, parse_path, "Data directory; $STATE_DIRECTORY or ~/.local/state/appliance."
    )


@dataclass(frozen=True)
class HttpSettings:
    listen: Address = setting(Address("127.0.0.1", 8080), parse_address, "HTTP listen address.")
    tls_cert: Path | None = setting(None, parse_path, "PEM certificate; enables TLS.")
    tls_key: Path | None = setting(None, parse_path, "PEM private key for tls_cert.")
    max_body_bytes: int = setting(1 << 20, parse_int(1024, 1 << 30), "Largest request body.")
    graceful_timeout_s: float = setting(
        10.0, parse_float(0.0, 300.0), "Grace for in-flight requests on stop."
    )
    session_ttl_s: int = setting(8 * 3600, parse_int(60, 30 * 86400), "Web session lifetime.")


@dataclass(frozen=True)
class BusSettings:
    tcp: Address = setting(Address("127.0.0.1", 7420), parse_address, "Bus TCP listen address.")
    unix: Path | None = setting(None, parse_path, "Bus Unix socket; DATA_DIR/run/bus.sock.")
    max_frame: int = setting(
        1 << 20, parse_int(1024, 64 << 20), "Largest bus frame accepted, in bytes."
    )
    max_bad_crc: int = setting(
        3, parse_int(1, 1000), "Bad checksums in a row before a bus connection is cut off."
    )
    ping_timeout_s: float = setting(
        60.0, parse_float(1.0, 3600.0), "A bus connection silent this long is closed."
    )
    stream_keep_s: float = setting(
        60.0,
        parse_float(0.1, 86400.0),
        "How long a bus stream's unacknowledged data waits for its receiver to come back.",
    )
    stream_buffer: int = setting(
        256 << 10, parse_int(4096, 64 << 20), "Bytes a bus stream relay holds unacknowledged."
    )
    links: tuple[str, ...] = setting(
        (),
        parse_bus_urls,
        "Other endpoints to link to: tcp://[TOKEN@]HOST:PORT, comma-separated.",
    )
    link_token: str = setting(
        "", parse_str, "Token for the links whose URL names none (an admin or operator token)."
    )


@dataclass(frozen=True)
class LogSettings:
    level: str = setting(
        "info", parse_choice("debug", "info", "warning", "error"), "Log level (live)."
    )


@dataclass(frozen=True)
class RateLimitSettings:
    rate: float = setting(50.0, parse_float(0.01, 1e6), "Requests per second per principal (live).")
    burst: int = setting(100, parse_int(1, 1_000_000), "Bucket size per principal (live).")


@dataclass(frozen=True)
class StoreSettings:
    map_size_mb: int = setting(64, parse_int(1, 1 << 20), "Initial LMDB map size.")
    max_map_size_mb: int = setting(8192, parse_int(1, 1 << 22), "Largest the map may grow.")


@dataclass(frozen=True)
class TasksSettings:
    max_queue: int = setting(1000, parse_int(1, 1_000_000), "Tasks queued at most; then 503.")
    concurrency: int = setting(0, parse_int(0, 1024), "Kernel threads at once; 0: CPU cores.")
    max_input_samples: int = setting(
        10_000_000, parse_int(1, 1 << 31), "Largest task input, in samples."
    )
    max_input_bytes: int = setting(
        64 << 20, parse_int(1024, 1 << 31), "Largest task submission body, in bytes."
    )
    default_timeout_s: float = setting(60.0, parse_float(0.001, 86400.0), "Task timeout.")
    result_ttl_s: float = setting(
        86400.0, parse_float(1.0, 365 * 86400.0), "How long finished tasks are kept."
    )
    warm_kernels: bool = setting(True, parse_bool, "Compile every kernel at start-up.")
    kernel_nice: int = setting(
        10, parse_int(0, 19), "Nice increment of kernel threads, so the loop stays responsive."
    )


@dataclass(frozen=True)
class ConfigSettings:
    mode: str = setting(
        "hub", parse_choice("hub", "replica"), "hub accepts writes; replica follows upstream."
    )
    upstream: str = setting(
        "", parse_str, "Replica: the hub's base URL, or etcd's (upstream_kind = etcd)."
    )
    upstream_kind: str = setting(
        "appliance", parse_choice("appliance", "etcd"), "What upstream is."
    )
    upstream_token: str = setting("", parse_str, "Replica: a token of the upstream's replica role.")
    etcd_prefix: str = setting("/appliance/config/", parse_str, "Replica of etcd: the key prefix.")
    max_content_bytes: int = setting(
        1 << 20, parse_int(1, 16 << 20), "Largest content of one config version, in bytes."
    )
    log_retention: int = setting(
        10_000, parse_int(10, 10_000_000), "Feed entries kept; older ones need a snapshot."
    )
    poll_wait_s: float = setting(
        25.0, parse_float(0.1, 60.0), "Replica: how long each feed request is held upstream."
    )
    settings_key: str = setting(
        "", parse_str, "A config key whose TOML content overrides live settings ('': none)."
    )


@dataclass(frozen=True)
class SystemdSettings:
    watchdog: bool = setting(True, parse_bool, "Send WATCHDOG=1 when systemd asks for it.")


@dataclass(frozen=True)
class OtaSettings:
    firmware_root: Path = setting(
        Path("/opt/appliance"), parse_path, "A/B slot root: slots a and b, the current link."
    )
    trust_root: Path = setting(
        Path("/etc/appliance/ota-trust.json"),
        parse_path,
        "The trust root file: the public keys that sign bundles and their threshold.",
    )
    product: str = setting("appliance", parse_str, "Product name a bundle must be built for.")
    hardware: str = setting(
        "", parse_str, "Hardware id a bundle must support; empty: the machine type (uname -m)."
    )
    max_bundle_bytes: int = setting(
        1 << 30, parse_int(1024, 1 << 40), "Largest bundle an upload may carry, in bytes."
    )
    stall_timeout_s: float = setting(
        30.0, parse_float(0.1, 3600.0), "An upload that sends nothing this long is cut off."
    )
    upload_timeout_s: float = setting(
        3600.0, parse_float(1.0, 86400.0), "Longest a whole upload may take."
    )
    tries: int = setting(3, parse_int(1, 100), "Starts a new version gets before it is given up.")
    healthy_s: float = setting(
        60.0, parse_float(0.0, 86400.0), "How long every component must be ok before commit."
    )
    trial_timeout_s: float = setting(
        600.0,
        parse_float(1.0, 86400.0),
        "A version on trial not healthy by then exits 1 (its start counts as failed).",
    )


@dataclass(frozen=True)
class Settings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    data: DataSettings = field(default_factory=DataSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    log: LogSettings = field(default_factory=LogSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)
    systemd: SystemdSettings = field(default_factory=SystemdSettings)
    config: ConfigSettings = field(default_factory=ConfigSettings)
    ota: OtaSettings = field(default_factory=OtaSettings)
    # Where the values came from, for messages and for SIGHUP re-reads.
    config_file: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.data.dir is not None, "load_settings always resolves the data dir"
        return self.data.dir

    @property
    def bus_unix_path(self) -> Path:
        return self.bus.unix or self.data_dir / "run" / "bus.sock"


SECTIONS: dict[str, type] = {
    "device": DeviceSettings,
    "data": DataSettings,
    "http": HttpSettings,
    "bus": BusSettings,
    "log": LogSettings,
    "ratelimit": RateLimitSettings,
    "store": StoreSettings,
    "tasks": TasksSettings,
    "systemd": SystemdSettings,
    "config": ConfigSettings,
    "ota": OtaSettings,
}

LIVE_KEYS = frozenset({"log.level", "ratelimit.rate", "ratelimit.burst"})


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}
