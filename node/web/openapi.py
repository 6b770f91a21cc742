"""The OpenAPI 3.1 description of the dashboard's JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NULLNUM = {"type": ["number", "null"]}
_NULLSTR = {"type": ["string", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _section(name: str) -> dict[str, Any]:
    """A section: its document with ``available: true``, or the reason it is missing."""
    return {
        "oneOf": [
            {
                "allOf": [
                    _obj({"available": {"const": True}}, ["available"]),
                    {"$ref": f"#/components/schemas/{name}"},
                ]
            },
            {"$ref": "#/components/schemas/Unavailable"},
        ]
    }


_SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _STR, "status": _INT}, ["error", "status"]),
    "Unavailable": _obj({"available": {"const": False}, "reason": _STR}, ["available", "reason"]),
    "Status": _obj(
        {
            "node_id": _STR,
            "name": _STR,
            "version": _STR,
            "started_at": _NUM,
            "uptime_s": _NUM,
            "limits": _obj(
                {
                    "pause_background": _BOOL,
                    "bandwidth_cap_bps": {"type": ["integer", "null"]},
                    "refuse_uploads": _BOOL,
                    "refuse_audits": _BOOL,
                    "reasons": {"type": "array", "items": _STR},
                }
            ),
            "services": {"type": "object", "additionalProperties": {"type": "object"}},
            "update": {"type": "object", "description": "Update status, or Unavailable."},
        },
        ["node_id", "version", "uptime_s"],
    ),
    "Earnings": _obj(
        {
            "currency": _STR,
            "today": _NUM,
            "month": _NUM,
            "all_time": _NUM,
            "channels": _INT,
            "by_day": {
                "type": "array",
                "items": _obj(
                    {
                        "day": {"type": "string", "format": "date"},
                        "storage": _NUM,
                        "egress": _NUM,
                        "relay": _NUM,
                    }
                ),
            },
        }
    ),
    "Storage": _obj(
        {
            "used_bytes": _INT,
            "allocated_bytes": _INT,
            "free_bytes": _INT,
            "chunks": _INT,
            "contracts": {
                "type": "array",
                "items": _obj(
                    {
                        "id": _STR,
                        "client": _STR,
                        "size": _INT,
                        "price": _NUM,
                        "start": _NUM,
                        "end": _NUM,
                        "state": _STR,
                    }
                ),
            },
            "scores": _obj(
                {
                    "audit": _NUM,
                    "online": _NUM,
                    "suspension": _NUM,
                    "thresholds": _obj({"audit": _NUM, "online": _NUM, "suspension": _NUM}),
                }
            ),
            "degraded": _BOOL,
            "degraded_reason": _NULLSTR,
            "bandwidth": _obj({"ingress_bytes": _INT, "egress_bytes": _INT}),
            "contracts_total": _INT,
            "contracts_by_state": {"type": "object", "additionalProperties": _INT},
        }
    ),
    "Network": _obj(
        {
            "listen": _STR,
            "sessions": _INT,
            "peers": {
                "type": "array",
                "items": _obj(
                    {
                        "node_id": _STR,
                        "address": _STR,
                        "path": {"enum": ["direct", "port-mapped", "relayed"]},
                        "rtt_ms": _NULLNUM,
                    }
                ),
            },
            "nat": _obj({"class": _NULLSTR, "public_address": _NULLSTR, "port_mapping": _NULLSTR}),
            "bytes_in": _INT,
            "bytes_out": _INT,
        }
    ),
    "Hardware": _obj(
        {
            "cpu_temp_c": _NULLNUM,
            "thermal_level": _STR,
            "throttled": _obj(
                {
                    "now": {"type": "object", "additionalProperties": _BOOL},
                    "since_boot": {"type": "object", "additionalProperties": _BOOL},
                }
            ),
            "fan": {"type": "object"},
            "disks": {"type": "array", "items": {"type": "object"}},
            "leds": {"type": "object"},
            "findings": {
                "type": "array",
                "items": _obj({"level": _STR, "check": _STR, "message": _STR}),
            },
        }
    ),
    "Event": _obj(
        {
            "id": _INT,
            "ts": _NUM,
            "level": {"enum": ["info", "warning", "error"]},
            "source": _STR,
            "message": _STR,
            "data": {"type": "object"},
        },
        ["id", "ts", "level", "source", "message"],
    ),
    "ActionResult": _obj(
        {"ok": {"const": True}, "action": _STR, "message": _STR}, ["ok", "action", "message"]
    ),
}


def _ok(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERR = _ok(_ref("Error"), "Error with a one-line reason")
_BAD = {"400": _ERR, "403": _ERR}


def _get(summary: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _ok(schema), **_BAD}, **extra}}


def _action(summary: str, body: dict[str, Any] | None, *codes: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"adminToken": []}],
        "responses": {
            "200" if "202" not in codes else "202": _ok(_ref("ActionResult")),
            "400": _ERR,
            "401": _ok(_ref("Error"), "Missing or wrong admin token"),
            "413": _ERR,
            "415": _ERR,
            **{c: _ERR for c in codes if c != "202"},
        },
    }
    if body is not None:
        op["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return {"post": op}


def _qparam(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


PATHS: dict[str, Any] = {
    "/api/status": _get(
        "Identity, version, uptime, work limits, services, update status.", _ref("Status")
    ),
    "/api/earnings": _get(
        "Earnings today, this month, all time, and by day and kind.", _section("Earnings")
    ),
    "/api/earnings/export": {
        "get": {
            "summary": "The earnings ledger as a file (CSV or JSON) to download.",
            "parameters": [
                _qparam("format", {"enum": ["csv", "json"], "default": "csv"}, "File format.")
            ],
            "responses": {
                "200": {
                    "description": "The file",
                    "content": {"text/csv": {}, "application/json": {}},
                },
                "400": _ERR,
                "403": _ERR,
                "503": _ERR,
            },
        }
    },
    "/api/storage": _get(
        "Stored vs allocated, contracts, scores with thresholds, bandwidth.",
        _section("Storage"),
        parameters=[
            _qparam(
                "contracts",
                {"type": "integer", "minimum": 0, "maximum": 100000},
                "List at most this many contracts, newest first, and add contracts_total "
                "and contracts_by_state (counted over all).",
            )
        ],
    ),
    "/api/network": _get(
        "Peers and their paths, NAT and reachability, traffic.", _section("Network")
    ),
    "/api/hardware": _get(
        "Temperature, throttling, under-voltage, fan, disks, LEDs.", _section("Hardware")
    ),
    "/api/events": {
        "get": {
            "summary": "Recent events of the box, errors and warnings first.",
            "parameters": [
                _qparam(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    "Most events returned.",
                ),
                _qparam(
                    "level", {"enum": ["info", "warning", "error"]}, "Least severe level included."
                ),
                _qparam(
                    "after", {"type": "integer", "minimum": 0}, "Only events with a larger id."
                ),
            ],
            "responses": {
                "200": _ok(_obj({"events": {"type": "array", "items": _ref("Event")}})),
                **_BAD,
            },
        }
    },
    "/api/events/stream": {
        "get": {
            "summary": "Server-sent events: `status`, `earnings`, `storage`, `network`, "
            "`hardware` (the section's document, sent when it changed) and `event` (one new "
            "event, with its id as the SSE id; `Last-Event-ID` replays missed ones).",
            "responses": {
                "200": {"description": "An event stream", "content": {"text/event-stream": {}}},
                "400": _ERR,
                "403": _ERR,
                "503": _ERR,
            },
        }
    },
    "/api/openapi.json": _get("This description.", {"type": "object"}),
    "/metrics": {
        "get": {
            "summary": "The same figures in Prometheus text format.",
            "responses": {
                "200": {"description": "Prometheus exposition", "content": {"text/plain": {}}},
                **_BAD,
            },
        }
    },
    "/api/actions/identify": _action(
        "Blink the box's LEDs so it can be found on a shelf.",
        _obj({"seconds": {"type": "number", "minimum": 1, "maximum": 600, "default": 10}}),
        "202",
        "409",
        "503",
    ),
    "/api/actions/allocation": _action(
        "Set how many bytes of the data disk the network may use.",
        _obj({"bytes": {"type": "integer", "minimum": 0}}, ["bytes"]),
        "409",
        "503",
    ),
    "/api/actions/pause": _action(
        "Pause (true) or resume (false) accepting new storage work.",
        _obj({"paused": _BOOL}, ["paused"]),
        "409",
        "503",
    ),
    "/api/actions/shutdown": _action("Stop the agent gracefully.", None, "202"),
    "/api/actions/rotate-token": _action(
        "Issue a new admin token (returned once as `token`); the old one stops working.",
        None,
        "503",
    ),
}


def spec(version: str) -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bitchat-node dashboard API",
            "version": version,
            "description": "Read-only endpoints are open to the LAN (see [web] access); "
            "actions need the admin token from DATA_DIR/admin.token. Every error is JSON "
            "`{error, status}`. Sections whose service is absent answer 200 with "
            "`{available: false, reason}`.",
        },
        "paths": PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
