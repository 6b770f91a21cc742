"""Dashboard routes for relays: health, and enrollment for ``bitchat-fleet relay flash``."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.relays._wire import MAX_BRIDGE
from node.relays.service import RelayError

if TYPE_CHECKING:
    from node.relays.service import RelaysService

ADMIN_TOKEN_FILE = "admin.token"
MAX_WAIT_S = 30.0


def _service(request: web.Request) -> RelaysService:
    from node.web.app import CTX_KEY

    svc = request.app[CTX_KEY].services.get("relays")
    if svc is None:
        raise web.HTTPServiceUnavailable(text="the relays service is not running\n")
    return svc  # type: ignore[return-value]


def _check_admin(request: web.Request) -> None:
    from node.web.app import CTX_KEY

    path = request.app[CTX_KEY].data_dir / ADMIN_TOKEN_FILE
    try:
        expected = path.read_text().strip()
    except OSError:
        raise web.HTTPForbidden(
            text="no admin token on this box; run `bitchat-node init`\n"
        ) from None
    given = request.headers.get("Authorization", "")
    if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise web.HTTPUnauthorized(text="admin token required (Authorization: Bearer TOKEN)\n")


async def _admin_json(request: web.Request, strings: tuple[str, ...]) -> dict[str, Any]:
    """The admin-only JSON object body, with string values under ``strings``."""
    _check_admin(request)
    shape = "{" + ", ".join(strings) + "}"
    try:
        body: Any = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=f"expected a JSON object {shape}\n") from None
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in strings):
        raise web.HTTPBadRequest(text=f"expected a JSON object {shape} with string values\n")
    return body


async def list_relays(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.json_response(
        {"relays": svc.relays(), "offers": svc.relay_offers(), "record": svc.record_offers()}
    )


async def enroll(request: web.Request) -> web.Response:
    body = await _admin_json(request, ("name",))
    svc = _service(request)
    home = body.get("home")
    if home is None:
        host = request.url.host or "127.0.0.1"
        home = f"{host}:{svc.home_port()}"
    if not isinstance(home, str):
        raise web.HTTPBadRequest(text="home must be a string HOST:PORT\n")
    try:
        e = svc.enroll(body["name"], home)
    except RelayError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    return web.json_response(
        {"relay_id": e.relay_id, "name": e.name, "key": e.key, "home": e.home, "token": e.token},
        headers={"Cache-Control": "no-store"},
    )


async def bridge_receive(request: web.Request) -> web.Response:
    """Frames from the relays' BLE peers (end-to-end encrypted, base64), oldest first;
    ``?wait=S`` waits up to S seconds (at most 30) for one."""
    _check_admin(request)
    svc = _service(request)
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="wait must be a number of seconds\n") from None
    if not 0 <= wait <= MAX_WAIT_S:
        raise web.HTTPBadRequest(text=f"wait must be 0-{MAX_WAIT_S:g} seconds\n")
    frames = await svc.bridge_frames(wait)
    return web.json_response(
        {
            "frames": [
                {"relay_id": f.relay_id, "at": f.at, "data": base64.b64encode(f.payload).decode()}
                for f in frames
            ]
        },
        headers={"Cache-Control": "no-store"},
    )


def bridge_request(body: Any) -> tuple[str, bytes]:
    """(relay id, frame) from a ``{relay_id, data (base64)}`` object; ValueError says why not."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object {relay_id, data}")
    relay_id, data = body.get("relay_id"), body.get("data")
    if not isinstance(relay_id, str) or len(relay_id) != 16:
        raise ValueError("relay_id must be 16 hex digits")
    if not isinstance(data, str):
        raise ValueError("data must be a base64 string")
    try:
        bytes.fromhex(relay_id)
        payload = base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("relay_id must be hex and data base64") from None
    if not 0 < len(payload) <= MAX_BRIDGE:
        raise ValueError(f"a bridge frame carries 1-{MAX_BRIDGE} bytes")
    return relay_id.lower(), payload


async def bridge_send(request: web.Request) -> web.Response:
    """Carry a frame ``{relay_id, data (base64)}`` to a relay's BLE peer."""
    body = await _admin_json(request, ("relay_id", "data"))
    svc = _service(request)
    try:
        relay_id, payload = bridge_request(body)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    if not svc.send_bridge(relay_id, payload):
        raise web.HTTPConflict(text=f"relay {relay_id} is not online\n")
    return web.json_response({"sent": len(payload)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/relays", list_relays)
    app.router.add_post("/api/relays/enroll", enroll)
    app.router.add_get("/api/relays/bridge", bridge_receive)
    app.router.add_post("/api/relays/bridge", bridge_send)
