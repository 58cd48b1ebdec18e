"""The OpenAPI 3.1 document served at `/api/v1/openapi.json`.

Written by hand next to the routes (a test checks that every route is in it and nothing
else is), because the contract is what integrators read and it should say what we mean,
not what a generator guessed from signatures. It is long because it is one document (data,
not logic); splitting it per area would scatter the contract an integrator reads whole.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from appliance import __version__
from appliance.api import openapi_ota

PROBLEM = {"$ref": "#/components/responses/Problem"}
ROLE_NOTE = "Needs the `{}` role (or higher)."


def _op(
    summary: str,
    role: str | None,
    ok: dict[str, Any],
    *,
    body: Any = None,
    params: list[dict[str, Any]] | None = None,
    ok_status: str = "200",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": ROLE_NOTE.format(role) if role else "No credentials needed.",
        "responses": {ok_status: ok, "default": PROBLEM},
    }
    if role is None:
        operation["security"] = []
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if params:
        operation["parameters"] = params
    return operation


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


# A token's own bus topic patterns (docs/bus-protocol.md §4.2): replace the role's, within it.
_BUS_PATTERNS = {
    "type": "array",
    "maxItems": 32,
    "items": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Bus topic patterns replacing the role's defaults, never beyond them; "
    "422 invalid_pattern or pattern_exceeds_role otherwise",
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `code` is stable, `detail` is for humans.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "uptime_s", "components"],
        "properties": {
            "status": {"enum": ["starting", "ok", "degraded", "stopping"]},
            "version": {"type": "string"},
            "uptime_s": {"type": "number"},
            "components": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "status": {"enum": ["starting", "ok", "degraded", "down", "stopping"]},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
    },
    "Token": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "role": {"enum": ["viewer", "operator", "admin"]},
            "created_at": {"type": "number"},
            "expires_at": {"type": ["number", "null"]},
            "revoked_at": {"type": ["number", "null"]},
            "created_by": {"type": "string"},
            "bus_publish": {"type": ["array", "null"], "items": {"type": "string"}},
            "bus_subscribe": {"type": ["array", "null"], "items": {"type": "string"}},
        },
    },
    "NewToken": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "role"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "role": {"enum": ["viewer", "operator", "admin"]},
            "ttl_s": {"type": "number", "minimum": 60, "maximum": 315360000},
            "bus_publish": _BUS_PATTERNS,
            "bus_subscribe": _BUS_PATTERNS,
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "seq": {"type": "integer"},
            "time": {"type": "number"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "outcome": {"type": "string"},
            "remote": {"type": "string"},
            "detail": {"type": "object"},
            "prev": {"type": "string"},
            "hash": {"type": "string"},
        },
    },
}

PATHS: dict[str, Any] = {
    "/api/v1/health": {
        "get": {
            **_op("Health of the process and each component", None, _json(_ref("Health"))),
            "responses": {
                "200": _json(_ref("Health"), "Everything is ok"),
                "503": _json(_ref("Health"), "Starting, degraded or stopping"),
            },
        }
    },
    "/api/v1/metrics": {
        "get": _op(
            "Prometheus metrics",
            "viewer",
            {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        )
    },
    "/api/v1/openapi.json": {"get": _op("This document", None, _json({"type": "object"}))},
    "/api/v1/auth/tokens": {
        "post": _op(
            "Create a token; the secret is shown only in this response",
            "admin",
            _json(
                {
                    "allOf": [
                        _ref("Token"),
                        {"type": "object", "properties": {"token": {"type": "string"}}},
                    ]
                },
                "Created",
            ),
            body=_ref("NewToken"),
            ok_status="201",
        ),
        "get": _op(
            "List tokens (never their secrets)",
            "admin",
            _json(
                {
                    "type": "object",
                    "properties": {"tokens": {"type": "array", "items": _ref("Token")}},
                }
            ),
        ),
    },
    "/api/v1/auth/tokens/{token_id}": {
        "delete": {
            **_op("Revoke a token (its sessions end with it)", "admin", _json(_ref("Token"))),
            "parameters": [
                {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        }
    },
    "/api/v1/auth/me": {
        "get": _op(
            "Who the credentials belong to",
            "viewer",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "token_id": {"type": "string"},
                        "name": {"type": "string"},
                        "role": {"type": "string"},
                        "via_session": {"type": "boolean"},
                        "csrf_token": {"type": "string"},
                    },
                }
            ),
        )
    },
    "/api/v1/auth/session": {
        "post": {
            **_op(
                "Trade a token for an HttpOnly, SameSite=Strict session cookie",
                None,
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string"},
                            "csrf_token": {"type": "string"},
                            "expires_at": {"type": "number"},
                        },
                    },
                    "Created; sets the cookie",
                ),
                ok_status="201",
            ),
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"token": {"type": "string"}},
                        }
                    }
                },
            },
            "description": 'Send the token as `Authorization: Bearer` or as `{"token"}`. '
            "Writes made with the cookie must send `X-CSRF-Token`.",
        },
        "delete": _op("End the session of this cookie", "viewer", _json({"type": "object"})),
    },
    "/api/v1/admin/backup": {
        "post": _op(
            "Stream a compacted copy of the store (save it as data.mdb)",
            "admin",
            {
                "description": "An LMDB data file",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
        )
    },
    "/api/v1/audit": {
        "get": _op(
            "Read the audit log",
            "admin",
            _json(
                {
                    "type": "object",
                    "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")}},
                }
            ),
            params=[
                _query(
                    "after",
                    "Entries after this sequence number (before, with order=desc)",
                    {"type": "integer", "minimum": 0},
                ),
                _query(
                    "limit", "At most this many", {"type": "integer", "minimum": 1, "maximum": 1000}
                ),
                _query("order", "asc (oldest first) or desc", {"enum": ["asc", "desc"]}),
            ],
        )
    },
    "/api/v1/audit/verify": {
        "get": _op(
            "Recompute the audit hash chain",
            "admin",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "ok": {"type": "boolean"},
                        "entries": {"type": "integer"},
                        "problems": {"type": "array", "items": {"type": "string"}},
                    },
                }
            ),
        )
    },
}

_TASK_ID = [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long poll: hold the request until the task has ended, at most this many "
    "seconds, and not past the start of a stop; then answer as without it",
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
}
SCHEMAS["Task"] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kernel": {"type": "string"},
        "params": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "timeout_s": {"type": "number"},
        "max_retries": {"type": "integer"},
        "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]},
        "attempts": {"type": "integer"},
        "idempotency_key": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "error": {
            "type": ["object", "null"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "history": {"type": "array", "items": {"type": "object"}},
        "finished": {"type": "boolean"},
    },
}
SCHEMAS["NewTask"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kernel", "input"],
    "properties": {
        "kernel": {"type": "string"},
        "params": {"type": "object", "description": "see GET /api/v1/kernels/{name}"},
        "input": {
            "oneOf": [
                {"type": "array", "items": {"type": "number"}},
                {
                    "type": "object",
                    "required": ["dtype", "shape", "data"],
                    "properties": {
                        "dtype": {"enum": ["float32", "float64"]},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "data": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "little-endian, C order (bytes in CBOR)",
                        },
                    },
                },
            ]
        },
        "priority": {
            "type": "integer",
            "minimum": 0,
            "maximum": 9,
            "default": 5,
            "description": "higher runs first",
        },
        "timeout_s": {"type": "number", "minimum": 0.001, "maximum": 86400},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2},
        "idempotency_key": {"type": "string", "maxLength": 128},
    },
}
PATHS.update(
    {
        "/api/v1/kernels": {
            "get": _op(
                "List the kernels",
                "viewer",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "kernels": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "summary": {"type": "string"},
                                    },
                                },
                            }
                        },
                    }
                ),
            )
        },
        "/api/v1/kernels/{name}": {
            "get": {
                **_op(
                    "A kernel's parameter schema, input rules and outputs",
                    "viewer",
                    _json({"type": "object"}),
                ),
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            }
        },
        "/api/v1/tasks": {
            "post": {
                **_op(
                    "Submit a task (202; 200 with the existing task for a used idempotency "
                    "key). JSON, or the same map as application/cbor.",
                    "operator",
                    _json(_ref("Task"), "Accepted"),
                    body=_ref("NewTask"),
                    ok_status="202",
                ),
            },
            "get": _op(
                "List tasks, newest first",
                "viewer",
                _json(
                    {
                        "type": "object",
                        "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
                    }
                ),
                params=[
                    _query("state", "Only tasks in this state", {"type": "string"}),
                    _query(
                        "limit",
                        "At most this many",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                    _query("before", "Tasks older than this id (paging)", {"type": "string"}),
                ],
            ),
        },
        "/api/v1/tasks/{task_id}": {
            "get": {
                **_op(
                    "One task; with ?wait=S held until it has ended (or S seconds)",
                    "viewer",
                    _json(_ref("Task")),
                ),
                "parameters": [*_TASK_ID, _WAIT],
            }
        },
        "/api/v1/tasks/{task_id}/result": {
            "get": {
                **_op(
                    "A finished task's outputs: JSON (NaN and inf as null), or CBOR with typed "
                    "arrays when Accept: application/cbor",
                    "viewer",
                    _json({"type": "object"}),
                ),
                "parameters": [*_TASK_ID, _WAIT],
            }
        },
        "/api/v1/tasks/{task_id}/cancel": {
            "post": {
                **_op("Cancel a queued or running task", "operator", _json(_ref("Task"))),
                "parameters": _TASK_ID,
            }
        },
        "/api/v1/scheduler": {
            "get": _op(
                "Queue depth, running tasks, capacity, totals by state",
                "viewer",
                _json({"type": "object"}),
            )
        },
    }
)

_KEY_PARAMS = [
    {
        "name": segment,
        "in": "path",
        "required": True,
        "description": "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    }
    for segment in ("tenant", "app", "env", "name")
]
_KEY = "/api/v1/config/{tenant}/{app}/{env}/{name}"
_REVISION = {"type": "integer", "minimum": 0}
SCHEMAS["ConfigVersion"] = {
    "type": "object",
    "description": "An immutable version of a key (listings leave out `content`, give `size`)",
    "properties": {
        "number": {"type": "integer", "minimum": 1},
        "format": {"enum": ["json", "toml", "yaml", "text"]},
        "content": {"type": "string"},
        "size": {"type": "integer", "description": "bytes of content (UTF-8)"},
        "sha256": {"type": "string"},
        "author": {"type": "string"},
        "comment": {"type": "string"},
        "created_at": {"type": "number"},
    },
}
SCHEMAS["NewConfigVersion"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "content"],
    "properties": {
        "format": {"enum": ["json", "toml", "yaml", "text"]},
        "content": {
            "type": "string",
            "minLength": 1,
            "description": "must parse as its format; at most config.max_content_bytes",
        },
        "comment": {"type": "string", "maxLength": 1024},
    },
}
SCHEMAS["ReleaseRule"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "priority"],
    "properties": {
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "all must be labels of the box, with these values",
        },
        "version": {"type": "integer", "description": "an existing version of the key"},
        "priority": {
            "type": "integer",
            "minimum": -1000,
            "maximum": 1000,
            "description": "distinct within a key; the highest matching rule wins",
        },
        "percent": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 100,
            "description": "only this share of the matching boxes (a sticky bucket per box)",
        },
    },
}
SCHEMAS["ReleaseRules"] = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "rules": {"type": "array", "items": _ref("ReleaseRule")},
        "revision": _REVISION,
    },
}
_CONTENT = {"schema": {"type": "string"}}
_CONFIG_HEADERS = {
    "ETag": {"description": "the content's sha256, quoted", "schema": {"type": "string"}},
    "X-Config-Version": {"schema": {"type": "integer"}},
    "X-Config-Revision": {"description": "this box's config revision", "schema": _REVISION},
    "X-Config-Format": {"schema": {"enum": ["json", "toml", "yaml", "text"]}},
}
_REPLICA_NOTE = "Needs the `replica` role (or admin): the token a following box uses."
PATHS.update(
    {
        "/api/v1/config": {
            "get": _op(
                "List config keys in key order",
                "viewer",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "keys": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "key": {"type": "string"},
                                        "latest": {"type": "integer"},
                                        "rules": {"type": "integer"},
                                        "revision": _REVISION,
                                        "created_at": {"type": "number"},
                                    },
                                },
                            },
                            "next": {
                                "type": ["string", "null"],
                                "description": "pass as `after` for the next page",
                            },
                            "revision": _REVISION,
                        },
                    }
                ),
                params=[
                    _query("prefix", "Only keys starting with this", {"type": "string"}),
                    _query("after", "Keys after this one (paging)", {"type": "string"}),
                    _query(
                        "limit",
                        "At most this many (default 100)",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                ],
            )
        },
        _KEY: {
            "get": {
                **_op(
                    "The content this box gets (its effective version), raw, typed by format. "
                    "If-None-Match with the ETag: 304; with ?wait=S as well, held until it "
                    "changes (200) or S seconds pass (304)",
                    "viewer",
                    {
                        "description": "The content",
                        "headers": _CONFIG_HEADERS,
                        "content": {
                            "application/json": _CONTENT,
                            "application/toml": _CONTENT,
                            "application/yaml": _CONTENT,
                            "text/plain": _CONTENT,
                        },
                    },
                ),
                "parameters": [
                    *_KEY_PARAMS,
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "Long poll, with If-None-Match: hold until the content "
                        "differs, at most this many seconds, not past the start of a stop",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                ],
            }
        },
        _KEY + "/explain": {
            "get": {
                **_op(
                    "Which release rule gives this box its version, and why the others do not",
                    "viewer",
                    _json({"type": "object"}),
                ),
                "parameters": _KEY_PARAMS,
            }
        },
        _KEY + "/versions": {
            "get": {
                **_op(
                    "The key's versions (without content)",
                    "viewer",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "key": {"type": "string"},
                                "latest": {"type": "integer"},
                                "versions": {"type": "array", "items": _ref("ConfigVersion")},
                            },
                        }
                    ),
                ),
                "parameters": _KEY_PARAMS,
            },
            "post": {
                **_op(
                    "Add a version (on a hub; a replica answers 409 read_only_replica)",
                    "operator",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "key": {"type": "string"},
                                "version": _ref("ConfigVersion"),
                                "revision": _REVISION,
                            },
                        },
                        "Created",
                    ),
                    body=_ref("NewConfigVersion"),
                    ok_status="201",
                ),
                "parameters": _KEY_PARAMS,
            },
        },
        _KEY + "/versions/{number}": {
            "get": {
                **_op("One version, with its content", "viewer", _json(_ref("ConfigVersion"))),
                "parameters": [
                    *_KEY_PARAMS,
                    {
                        "name": "number",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
            }
        },
        _KEY + "/releases": {
            "get": {
                **_op(
                    "The key's release rules, highest priority first",
                    "viewer",
                    _json(_ref("ReleaseRules")),
                ),
                "parameters": _KEY_PARAMS,
            },
            "put": {
                **_op(
                    "Replace the key's release rules (on a hub)",
                    "operator",
                    _json(_ref("ReleaseRules")),
                    body={
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["rules"],
                        "properties": {
                            "rules": {
                                "type": "array",
                                "maxItems": 64,
                                "items": _ref("ReleaseRule"),
                            }
                        },
                    },
                ),
                "parameters": _KEY_PARAMS,
            },
        },
        "/api/v1/config/watch": {
            "get": _op(
                "Server-Sent Events, one `change` event per change (`id` = its revision, "
                "`data` = {revision, key, op, at, version, sha256 | rules}); a `: keep-alive` "
                "comment after 15 s of silence; a `reset` event, then the end, when the "
                "watcher fell behind what the log holds. Resume with Last-Event-ID (or "
                "?after=REV); a resume point the log no longer holds is a 410 "
                "revision_compacted",
                "viewer",
                {
                    "description": "An event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                params=[
                    _query("prefix", "Only changes of keys starting with this", {"type": "string"}),
                    _query(
                        "after",
                        "Changes after this revision (default: from now on)",
                        {"type": "integer", "minimum": 0},
                    ),
                ],
            )
        },
        "/api/v1/config/log": {
            "get": {
                **_op(
                    "The replication feed: entries after a revision (410 revision_compacted "
                    "when the log no longer holds it: fetch the snapshot)",
                    "replica",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "revision": _REVISION,
                                "compacted_through": _REVISION,
                                "entries": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    ),
                    params=[
                        _query("after", "Entries after this revision", _REVISION),
                        _query(
                            "limit",
                            "At most this many (default 500)",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                        ),
                        _query(
                            "wait",
                            "Long poll: hold up to this many seconds when there are none",
                            {"type": "number", "minimum": 0, "maximum": 60},
                        ),
                    ],
                ),
                "description": _REPLICA_NOTE,
            }
        },
        "/api/v1/config/snapshot": {
            "get": {
                **_op(
                    "Every key with its versions and rules, at one revision",
                    "replica",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "revision": _REVISION,
                                "keys": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    ),
                ),
                "description": _REPLICA_NOTE,
            }
        },
        "/api/v1/config/status": {
            "get": _op(
                "Mode (hub or replica), revision, and a replica's upstream, lag and last sync",
                "viewer",
                _json({"type": "object"}),
            )
        },
    }
)

_COUNTS = {"type": "integer", "minimum": 0}
SCHEMAS["BusConnection"] = {
    "type": "object",
    "description": "One bus connection. Counters are payload messages and bytes: `in` what "
    "it published, `out` the deliveries queued for it, `dropped` those lost to its "
    "slow-consumer policies (the gaps it is told about).",
    "properties": {
        "id": {"type": "integer"},
        "state": {"enum": ["hello", "established", "closing", "closed"]},
        "node": {
            "type": ["object", "null"],
            "description": "its node record (docs/bus-protocol.md), if its hello had one",
        },
        "principal": {
            "type": ["object", "null"],
            "properties": {"name": {"type": "string"}, "role": {"type": "string"}},
        },
        "link": {"type": "boolean", "description": "another endpoint linked to this one"},
        "subscriptions": _COUNTS,
        "transport": {"enum": ["unix", "tcp"]},
        "remote": {"type": "string", "description": "host:port over TCP, empty over Unix"},
        "connected_since": {"type": "number", "description": "Unix time"},
        "messages_in": _COUNTS,
        "bytes_in": _COUNTS,
        "messages_out": _COUNTS,
        "bytes_out": _COUNTS,
        "dropped": _COUNTS,
    },
}
SCHEMAS["BusTopic"] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "messages": _COUNTS,
        "bytes": _COUNTS,
        "deliveries": _COUNTS,
        "dropped": _COUNTS,
        "rate": {"type": "number", "description": "messages/s over the last window_s seconds"},
        "retained": {"type": "boolean", "description": "the topic holds a retained value"},
    },
}
SCHEMAS["BusMessage"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["topic"],
    "properties": {
        "topic": {"type": "string", "maxLength": 255, "description": "a topic, no wildcards"},
        "data": {"type": "string", "description": "the payload as UTF-8 text"},
        "data_base64": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "the payload as base64 (not with data)",
        },
        "retain": {"type": "boolean", "default": False},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
PATHS.update(
    {
        "/api/v1/bus/peers": {
            "get": _op(
                "The bus endpoint's node record and its connections; with ?selector= only "
                "those whose node labels match (400 invalid_selector for a bad one)",
                "viewer",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "endpoint": {"type": "object"},
                            "connections": {"type": "array", "items": _ref("BusConnection")},
                        },
                    }
                ),
                params=[
                    _query(
                        "selector",
                        "Label selector: key=value, key!=value, key in (a,b), key notin (a,b), "
                        "key, !key; comma = and",
                        {"type": "string", "maxLength": 4096},
                    )
                ],
            )
        },
        "/api/v1/bus/topics": {
            "get": _op(
                "Topics seen recently (at most 10,000 are tracked, least recently published "
                "forgotten first) and topics holding a retained value, by name, with counts "
                "and message rates",
                "viewer",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "topics": {"type": "array", "items": _ref("BusTopic")},
                            "truncated": {"type": "boolean"},
                            "tracked": _COUNTS,
                            "max_tracked": _COUNTS,
                            "evicted": _COUNTS,
                            "window_s": _COUNTS,
                            "totals": {"type": "object"},
                        },
                    }
                ),
                params=[
                    _query("prefix", "Only topics starting with this", {"type": "string"}),
                    _query(
                        "limit",
                        "At most this many (default 1000)",
                        {"type": "integer", "minimum": 1, "maximum": 10000},
                    ),
                ],
            )
        },
        "/api/v1/bus/publish": {
            "post": _op(
                "Publish a message on the bus as the endpoint (202 with the number of "
                "deliveries queued). 422 invalid_topic, 413 message_too_large over the bus "
                "frame, 403 when the token's bus patterns do not allow the topic",
                "operator",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "topic": {"type": "string"},
                            "bytes": _COUNTS,
                            "retained": {"type": "boolean"},
                            "deliveries": _COUNTS,
                        },
                    },
                    "Accepted",
                ),
                body=_ref("BusMessage"),
                ok_status="202",
            )
        },
    }
)

_OTA_PATHS, _OTA_SCHEMAS = openapi_ota.describe(_op, _json, _ref)
PATHS.update(_OTA_PATHS)
SCHEMAS.update(_OTA_SCHEMAS)

# `/metrics` at the root is the same handler as `/api/v1/metrics`, for Prometheus defaults.
PATHS["/metrics"] = PATHS["/api/v1/metrics"]


@cache
def openapi_document() -> bytes:
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Appliance API",
            "version": __version__,
            "description": "The edge appliance's REST API. Errors are problem details "
            "(application/problem+json) with a stable `code`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Problem": {
                    "description": "An error",
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "appliance_session"},
            },
        },
    }
    return json.dumps(document, indent=1).encode()
