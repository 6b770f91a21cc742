"""Dashboard routes for relays: health, and enrollment for ``bitchat-fleet relay flash``."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.relays.service import RelayError

if TYPE_CHECKING:
    from node.relays.service import RelaysService

ADMIN_TOKEN_FILE = "admin.token"


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


async def list_relays(request: web.Request) -> web.Response:
    svc = _service(request)
    return web.json_response({"relays": svc.relays(), "offers": svc.relay_offers()})


async def enroll(request: web.Request) -> web.Response:
    _check_admin(request)
    svc = _service(request)
    try:
        body: Any = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON object {name, home?}\n") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise web.HTTPBadRequest(text="expected a JSON object with a string name\n")
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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/relays", list_relays)
    app.router.add_post("/api/relays/enroll", enroll)
