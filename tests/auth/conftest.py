"""Helpers shared by the auth tests: problem-detail checks and direct access to the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from appliance.store import Store

PROBLEM_MEMBERS = ("type", "title", "status", "code", "detail")


def check_problem(response: httpx.Response, status: int, code: str) -> dict:
    """The response is an RFC 9457 problem with this status and stable code; return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert all(member in body for member in PROBLEM_MEMBERS), body
    assert body["status"] == status
    assert body["code"] == code, body
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="appliance"'
    return body


@pytest.fixture
def assert_problem() -> Callable[[httpx.Response, int, str], dict]:
    return check_problem


@contextmanager
def store_at(data_dir: Path, *, readonly: bool = False) -> Iterator[Store]:
    """The appliance's store opened from this process (LMDB shares it between processes)."""
    store = Store.open(data_dir / "store", readonly=readonly)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def open_store() -> Callable[..., contextmanager]:
    return store_at
