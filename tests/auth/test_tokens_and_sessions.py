"""Tokens (expired, revoked, malformed headers) and web sessions (cookie, CSRF, logout).

Expired tokens are made by writing straight into the running appliance's store from this
process (LMDB is multi-process), since the API refuses a ttl below 60 s.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time

import httpx
import pytest

from appliance.auth.sessions import COOKIE_NAME, CSRF_HEADER
from appliance.auth.tokens import TokenStore
from appliance.store import pack_key

TOKENS = "/api/v1/auth/tokens"
SESSION = "/api/v1/auth/session"
ME = "/api/v1/auth/me"
SESSION_TTL_S = 8 * 3600  # the default http.session_ttl_s


def create_token(appliance, role: str = "viewer", **extra) -> dict:
    with appliance.client(appliance.token) as http:
        response = http.post(
            TOKENS, json={"name": f"t-{secrets.token_hex(4)}", "role": role, **extra}
        )
    assert response.status_code == 201, response.text
    return response.json()


def start_session(appliance, secret: str) -> tuple[str, dict]:
    """POST /auth/session with the token; the cookie value and the JSON body."""
    with appliance.client(secret) as http:
        response = http.post(SESSION)
    assert response.status_code == 201, response.text
    return response.cookies[COOKIE_NAME], response.json()


def cookie_client(appliance, cookie: str, **headers: str) -> httpx.Client:
    """A client that authenticates with the session cookie only (no Authorization)."""
    return httpx.Client(
        base_url=appliance.url, timeout=10, headers={"Cookie": f"{COOKIE_NAME}={cookie}", **headers}
    )


def token_record(appliance, token_id: str) -> dict:
    with appliance.client(appliance.token) as http:
        tokens = http.get(TOKENS).json()["tokens"]
    return next(t for t in tokens if t["id"] == token_id)


def expire(open_store, appliance, token_id: str) -> float:
    """Move a stored token's expiry into the past; return the new expires_at."""
    past = time.time() - 5

    def write(txn):
        record = txn.get("tokens", pack_key(token_id))
        txn.put("tokens", pack_key(token_id), {**record, "expires_at": past})

    with open_store(appliance.data_dir) as store:
        store.write_now(write)
    return past


# Expired and revoked tokens.


def test_a_token_created_already_expired_is_refused(shared_appliance, open_store, assert_problem):
    with open_store(shared_appliance.data_dir) as store:
        write, secret = TokenStore.creation(
            "expired-on-arrival", "operator", ttl_s=60, created_by="test"
        )
        record = store.write_now(write)
        store.write_now(
            lambda txn: txn.put(
                "tokens",
                pack_key(record.id),
                {**record.public(), "expires_at": record.created_at - 1},
            )
        )

    stored = token_record(shared_appliance, record.id)
    assert stored["expires_at"] == record.created_at - 1
    assert stored["revoked_at"] is None
    with shared_appliance.client(secret) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "token expired"
        assert (
            assert_problem(http.post(SESSION), 401, "unauthenticated")["detail"] == "token expired"
        )
    with shared_appliance.client() as http:
        refused = http.post(SESSION, json={"token": secret})
    assert assert_problem(refused, 401, "unauthenticated")["detail"] == "token expired"


def test_a_token_that_expires_stops_working_with_its_sessions(
    shared_appliance, open_store, assert_problem
):
    token = create_token(shared_appliance, ttl_s=3600)
    assert token["expires_at"] == pytest.approx(token["created_at"] + 3600)
    cookie, _ = start_session(shared_appliance, token["token"])
    with cookie_client(shared_appliance, cookie) as http:
        assert http.get(ME).status_code == 200

    expire(open_store, shared_appliance, token["id"])
    with shared_appliance.client(token["token"]) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "token expired"
    with cookie_client(shared_appliance, cookie) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "token expired"


def test_a_revoked_token_is_refused(shared_appliance, assert_problem):
    token = create_token(shared_appliance, role="operator")
    with shared_appliance.client(token["token"]) as http:
        me = http.get(ME)
        assert me.status_code == 200
        assert me.json() == {
            "token_id": token["id"],
            "name": token["name"],
            "role": "operator",
            "via_session": False,
        }

    with shared_appliance.client(shared_appliance.token) as admin:
        revoked = admin.delete(f"{TOKENS}/{token['id']}")
        assert revoked.status_code == 200
        revoked_at = revoked.json()["revoked_at"]
        assert revoked_at is not None
        again = admin.delete(f"{TOKENS}/{token['id']}")
        assert again.status_code == 200
        assert again.json()["revoked_at"] == revoked_at
    assert token_record(shared_appliance, token["id"])["revoked_at"] == revoked_at

    with shared_appliance.client(token["token"]) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "token revoked"
        assert (
            assert_problem(http.post(SESSION), 401, "unauthenticated")["detail"] == "token revoked"
        )


# Malformed Authorization headers.

REFUSED_HEADERS = {
    "scheme-only": lambda secret: "Bearer",
    "colon-not-space": lambda secret: f"Bearer:{secret}",
    "basic-scheme": lambda secret: "Basic dXNlcjpwYXNzd29yZA==",
    "other-scheme-valid-token": lambda secret: f"Token {secret}",
    "no-scheme": lambda secret: secret,
    "not-a-token": lambda secret: "Bearer not-a-token",
    "overlong-token": lambda secret: "Bearer apl_" + "a" * 200,
    "token-with-suffix": lambda secret: f"Bearer {secret}x",
    "token-truncated": lambda secret: f"Bearer {secret[:-1]}",
    "two-tokens": lambda secret: f"Bearer {secret} {secret}",
    "latin1-bytes": lambda secret: b"Bearer apl_\xff\xfe\xe9",
}


@pytest.fixture(scope="module")
def viewer(shared_appliance) -> dict:
    return create_token(shared_appliance, role="viewer")


@pytest.mark.parametrize("make", REFUSED_HEADERS.values(), ids=REFUSED_HEADERS.keys())
def test_malformed_authorization_is_refused(shared_appliance, viewer, assert_problem, make):
    with shared_appliance.client() as http:
        response = http.get(ME, headers={"Authorization": make(viewer["token"])})
    body = assert_problem(response, 401, "unauthenticated")
    assert viewer["token"] not in response.text
    assert body["detail"] in {
        "the Authorization header must be 'Bearer <token>'",
        "malformed token",
        "unknown token",
    }


@pytest.mark.parametrize(
    "header",
    ["bearer {}", "BEARER {}", "Bearer   {}"],
    ids=["lowercase", "uppercase", "extra-spaces"],
)
def test_the_bearer_scheme_is_case_insensitive(shared_appliance, viewer, header):
    with shared_appliance.client() as http:
        response = http.get(ME, headers={"Authorization": header.format(viewer["token"])})
    assert response.status_code == 200
    assert response.json()["token_id"] == viewer["id"]


# Sessions.


def test_a_session_cookie_is_httponly_strict_and_comes_with_a_csrf_token(shared_appliance):
    token = create_token(shared_appliance, role="operator")
    before = time.time()
    with shared_appliance.client(token["token"]) as http:
        response = http.post(SESSION)
    after = time.time()
    assert response.status_code == 201
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1
    name_value, *attributes = [part.strip() for part in cookies[0].split(";")]
    name, _, value = name_value.partition("=")
    assert name == COOKIE_NAME and len(value) >= 32
    attributes = {attribute.lower() for attribute in attributes}
    assert {"httponly", "samesite=strict", "path=/", f"max-age={SESSION_TTL_S}"} <= attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back

    body = response.json()
    assert body["role"] == "operator"
    assert isinstance(body["csrf_token"], str) and len(body["csrf_token"]) >= 16
    assert before + SESSION_TTL_S <= body["expires_at"] <= after + SESSION_TTL_S
    assert body["csrf_token"] != value

    with cookie_client(shared_appliance, value) as http:
        me = http.get(ME)
    assert me.status_code == 200
    assert me.json() == {
        "token_id": token["id"],
        "name": token["name"],
        "role": "operator",
        "via_session": True,
        "csrf_token": body["csrf_token"],
    }


def test_a_session_can_be_made_from_a_token_in_the_body(shared_appliance):
    token = create_token(shared_appliance)
    with shared_appliance.client() as http:
        response = http.post(SESSION, json={"token": token["token"]})
    assert response.status_code == 201
    assert response.json()["role"] == "viewer"
    with cookie_client(shared_appliance, response.cookies[COOKIE_NAME]) as http:
        assert http.get(ME).json()["token_id"] == token["id"]


def test_cookie_writes_need_the_csrf_token(shared_appliance, assert_problem):
    admin = create_token(shared_appliance, role="admin")
    cookie, session = start_session(shared_appliance, admin["token"])
    _, other_session = start_session(shared_appliance, admin["token"])
    attempts = {
        "missing": {},
        "wrong": {CSRF_HEADER: secrets.token_urlsafe(24)},
        "empty": {CSRF_HEADER: ""},
        "another-sessions": {CSRF_HEADER: other_session["csrf_token"]},
        "session-id-as-csrf": {CSRF_HEADER: cookie},
    }
    with cookie_client(shared_appliance, cookie) as http:
        assert http.get(TOKENS).status_code == 200  # reads need no CSRF token
        for label, headers in attempts.items():
            response = http.post(
                TOKENS, json={"name": f"csrf-{label}", "role": "viewer"}, headers=headers
            )
            assert_problem(response, 403, "csrf_rejected")
            assert "www-authenticate" not in response.headers
        backup = http.post("/api/v1/admin/backup")
        assert_problem(backup, 403, "csrf_rejected")

        created = http.post(
            TOKENS,
            json={"name": "csrf-right", "role": "viewer"},
            headers={CSRF_HEADER: session["csrf_token"]},
        )
        assert created.status_code == 201
        victim = created.json()["id"]
        refused = http.delete(f"{TOKENS}/{victim}")
        assert_problem(refused, 403, "csrf_rejected")
        assert token_record(shared_appliance, victim)["revoked_at"] is None
        revoked = http.delete(f"{TOKENS}/{victim}", headers={CSRF_HEADER: session["csrf_token"]})
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None

    with shared_appliance.client(shared_appliance.token) as http:
        names = {t["name"] for t in http.get(TOKENS).json()["tokens"]}
    assert "csrf-right" in names
    assert not names & {f"csrf-{label}" for label in attempts}


def test_a_viewer_session_cannot_write_even_with_the_csrf_token(shared_appliance, assert_problem):
    token = create_token(shared_appliance, role="viewer")
    cookie, session = start_session(shared_appliance, token["token"])
    with cookie_client(shared_appliance, cookie, **{CSRF_HEADER: session["csrf_token"]}) as http:
        response = http.post(TOKENS, json={"name": "viewer-made", "role": "admin"})
    assert_problem(response, 403, "forbidden")


FORGED_COOKIES = {
    "random": lambda real: secrets.token_urlsafe(32),
    "one-char-changed": lambda real: real[:-1] + ("A" if real[-1] != "A" else "B"),
    "overlong": lambda real: "a" * 200,
    "empty": lambda real: "",
    "the-csrf-token": None,  # filled in the test
}


@pytest.mark.parametrize("forge", FORGED_COOKIES, ids=FORGED_COOKIES)
def test_a_forged_cookie_is_refused(shared_appliance, viewer, assert_problem, forge):
    real, session = start_session(shared_appliance, viewer["token"])
    make = FORGED_COOKIES[forge]
    forged = session["csrf_token"] if make is None else make(real)
    with cookie_client(shared_appliance, forged) as http:
        body = assert_problem(http.get(ME), 401, "unauthenticated")
    assert body["detail"] in {"unknown session", "malformed session cookie"}
    with cookie_client(shared_appliance, real) as http:
        assert http.get(ME).status_code == 200


def test_revoking_a_token_ends_its_sessions(shared_appliance, assert_problem):
    doomed = create_token(shared_appliance, role="operator")
    spared = create_token(shared_appliance, role="operator")
    doomed_cookies = [start_session(shared_appliance, doomed["token"])[0] for _ in range(2)]
    spared_cookie, _ = start_session(shared_appliance, spared["token"])
    for cookie in [*doomed_cookies, spared_cookie]:
        with cookie_client(shared_appliance, cookie) as http:
            assert http.get(ME).status_code == 200

    with shared_appliance.client(shared_appliance.token) as admin:
        assert admin.delete(f"{TOKENS}/{doomed['id']}").status_code == 200

    for cookie in doomed_cookies:
        with cookie_client(shared_appliance, cookie) as http:
            assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "token revoked"
    with cookie_client(shared_appliance, spared_cookie) as http:
        assert http.get(ME).json()["token_id"] == spared["id"]


def test_deleting_the_session_logs_out(shared_appliance, assert_problem):
    token = create_token(shared_appliance)
    cookie, session = start_session(shared_appliance, token["token"])
    other_cookie, _ = start_session(shared_appliance, token["token"])
    with cookie_client(shared_appliance, cookie) as http:
        assert_problem(http.delete(SESSION), 403, "csrf_rejected")
        assert http.get(ME).status_code == 200  # a refused logout leaves the session alive
        response = http.delete(SESSION, headers={CSRF_HEADER: session["csrf_token"]})
    assert response.status_code == 200
    assert response.json() == {"ended": True}
    cleared = response.headers["set-cookie"].lower()
    assert cleared.startswith(f"{COOKIE_NAME}=;") and "max-age=0" in cleared
    assert "path=/" in cleared

    with cookie_client(shared_appliance, cookie) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "unknown session"
        assert_problem(
            http.delete(SESSION, headers={CSRF_HEADER: session["csrf_token"]}),
            401,
            "unauthenticated",
        )
    with cookie_client(shared_appliance, other_cookie) as http:
        assert http.get(ME).status_code == 200  # only this session ended
    with shared_appliance.client(token["token"]) as http:
        assert http.get(ME).status_code == 200  # and not the token


def test_an_expired_session_is_refused_but_its_token_is_not(
    shared_appliance, viewer, open_store, assert_problem
):
    cookie, _ = start_session(shared_appliance, viewer["token"])
    key = hashlib.sha256(cookie.encode()).digest()  # the store keeps only the id's hash

    def expire_session(txn):
        value = txn.get("sessions", key)
        assert value["token_id"] == viewer["id"]
        txn.put("sessions", key, {**value, "expires_at": time.time() - 1})

    with open_store(shared_appliance.data_dir) as store:
        store.write_now(expire_session)
    with cookie_client(shared_appliance, cookie) as http:
        assert assert_problem(http.get(ME), 401, "unauthenticated")["detail"] == "session expired"
    with shared_appliance.client(viewer["token"]) as http:
        assert http.get(ME).status_code == 200


def test_logging_out_without_a_cookie_is_a_bad_request(shared_appliance, viewer, assert_problem):
    with shared_appliance.client(viewer["token"]) as http:
        assert_problem(http.delete(SESSION), 400, "no_session")


# Secrets stay secret.


def test_secrets_never_appear_in_listings_audit_log_service_log_or_store(
    shared_appliance, open_store
):
    tokens = [create_token(shared_appliance, role=role) for role in ("viewer", "admin")]
    secrets_seen = [t["token"] for t in tokens] + [shared_appliance.token]
    for token in tokens:
        cookie, _ = start_session(shared_appliance, token["token"])
        secrets_seen.append(cookie)
        with shared_appliance.client() as http:
            body_session = http.post(SESSION, json={"token": token["token"]})
            assert body_session.status_code == 201
            secrets_seen.append(body_session.cookies[COOKIE_NAME])
            # Failed uses of the secrets, which are audited.
            assert http.post(SESSION, json={"token": token["token"] + "x"}).status_code == 401
            assert (
                http.get(ME, headers={"Authorization": f"Bearer {token['token']}x"}).status_code
                == 401
            )
            assert (
                http.post(
                    TOKENS,
                    headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
                    json={"name": "x", "role": "viewer"},
                ).status_code
                == 403
            )
    with shared_appliance.client(shared_appliance.token) as admin:
        assert admin.delete(f"{TOKENS}/{tokens[0]['id']}").status_code == 200
        with shared_appliance.client(tokens[0]["token"]) as revoked:
            assert revoked.get(ME).status_code == 401
        listing = admin.get(TOKENS)
        audit, after = [], 0
        while True:
            page = admin.get("/api/v1/audit", params={"after": after, "limit": 1000})
            entries = page.json()["entries"]
            if not entries:
                break
            audit += entries
            after = entries[-1]["seq"]

    assert listing.status_code == 200
    assert all("token" not in record for record in listing.json()["tokens"])
    assert {t["id"] for t in tokens} <= {r["id"] for r in listing.json()["tokens"]}
    audit_text = json.dumps(audit)
    assert any(entry["outcome"] == "401" for entry in audit)
    service_log = shared_appliance.log()
    store_bytes = (shared_appliance.data_dir / "store" / "data.mdb").read_bytes()
    for secret in secrets_seen:
        assert secret not in listing.text
        assert secret not in audit_text
        assert secret not in service_log
        assert secret.encode() not in store_bytes
