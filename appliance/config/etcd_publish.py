"""Publishing config into etcd, in the layout a replica reads (etcd_layout.py); for the
CLI (`appliance config put|release --etcd URL`), so synchronous.

Everything is validated as a hub would before anything is written: content for its format,
rules against the versions etcd holds. A new version's number is one more than the highest
under its key, written with a txn that succeeds only if that etcd key does not exist yet,
so concurrent publishers each get their own number (the loser retries).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx

from appliance.config.errors import ConfigError, NotFound
from appliance.config.etcd_gateway import (
    EtcdError,
    EtcdUnreachable,
    create_request,
    prefix_end,
    put_request,
    range_request,
    read_error,
    read_range,
    read_txn,
)
from appliance.config.etcd_layout import (
    NotOurs,
    check_prefix,
    place_of,
    release_path,
    release_value,
    version_path,
    version_value,
    versions_dir,
)
from appliance.config.keys import ConfigKey, parse_key
from appliance.config.model import new_version, parse_rules

__all__ = ["check_url", "publish_rules", "publish_version"]

REQUEST_TIMEOUT_S = 10.0
PUBLISH_ATTEMPTS = 16  # a version number lost to a concurrent publisher is retried
DEFAULT_MAX_CONTENT = 1 << 20


def check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("invalid_etcd_url", f"etcd's URL is http(s)://host:port, not {url!r}")
    return url.rstrip("/")


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> bytes:
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise EtcdUnreachable(
            "etcd_unreachable", f"etcd at {client.base_url}: {exc or type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        raise read_error(response.status_code, response.content)
    return response.content


def _numbers(client: httpx.Client, prefix: str, key: ConfigKey) -> set[int]:
    first = versions_dir(prefix, key)
    found = set()
    for kv in read_range(
        _post(client, "/v3/kv/range", range_request(first, prefix_end(first), keys_only=True))
    ).kvs:
        with contextlib.suppress(NotOurs):
            found.add(place_of(prefix, kv.key).number)
    return found


def publish_version(
    url: str,
    prefix: str,
    key: str | ConfigKey,
    fmt: str,
    content: str,
    *,
    comment: str = "",
    author: str = "",
    max_content_bytes: int = DEFAULT_MAX_CONTENT,
) -> int:
    """Write the next version of `key` into etcd and return its number.

    The content is validated first (ConfigError, nothing written); the number is one more
    than the highest under the key, written only if that etcd key does not exist yet (a
    txn on create_revision == 0), so concurrent publishers each get their own number."""
    url, prefix, config_key = check_url(url), check_prefix(prefix), parse_key(str(key))
    new_version(
        1, fmt, content, author=author, comment=comment, now=0.0, max_bytes=max_content_bytes
    )
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(PUBLISH_ATTEMPTS):
            number = max(_numbers(client, prefix, config_key), default=0) + 1
            version = new_version(
                number,
                fmt,
                content,
                author=author,
                comment=comment,
                now=time.time(),
                max_bytes=max_content_bytes,
            )
            path = version_path(prefix, config_key, number)
            body = create_request(path, version_value(version.record()))
            if read_txn(_post(client, "/v3/kv/txn", body))[1]:
                return number
    raise EtcdError(
        "etcd_busy", f"{config_key}: lost the race for a version number {PUBLISH_ATTEMPTS} times"
    )


def publish_rules(url: str, prefix: str, key: str | ConfigKey, rules: Any) -> None:
    """Replace the release rules of `key` in etcd, validated against its versions there
    (NotFound `key_not_found` when it has none; ConfigError as on a hub otherwise)."""
    url, prefix, config_key = check_url(url), check_prefix(prefix), parse_key(str(key))
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        numbers = _numbers(client, prefix, config_key)
        if not numbers:
            raise NotFound("key_not_found", f"etcd has no versions of {config_key}; put one first")
        records = [rule.record() for rule in parse_rules(rules, numbers)]
        path = release_path(prefix, config_key)
        _post(client, "/v3/kv/put", put_request(path, release_value(records)))
