"""Dashboard route for the owner's reachability check: ``POST /api/network/reach``.

Body ``{"node_id": "<52 base32 chars>", "bytes": 1024, "fresh": false}`` (admin token
required): the agent looks the node up in the DHT, connects directly or through a relay as
the two NATs allow, echoes ``bytes`` random bytes and answers with the path the session
took (``direct``, ``port-mapped`` or ``relayed``), how a session this node opened started
(``opened``: ``direct`` or ``relayed``; null for one the peer opened), the address, the echo
time and the RTT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.identity import decode_id
from node.transport.nat.errors import NatError
from node.transport.nat.service import REACH_MAX
from node.web.app import CTX_KEY, ApiError, authorize, boolean, integer_in, json_body

if TYPE_CHECKING:
    from node.transport.nat.service import NatService


def _node_id(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected a node id (52 base32 characters), got {value!r:.40}")
    return decode_id(value)


async def reach(request: web.Request) -> web.Response:
    authorize(request, "reach")
    body = await json_body(
        request, {"node_id": _node_id, "bytes": integer_in(1, REACH_MAX), "fresh": boolean}
    )
    if "node_id" not in body:
        raise ApiError(400, "field 'node_id' is required (the node to reach)")
    nat: NatService | None = request.app[CTX_KEY].services.get("nat")  # type: ignore[assignment]
    if nat is None or nat.traversal is None:
        raise ApiError(503, "the nat service is not running")
    try:
        result = await nat.reach(body["node_id"], body.get("bytes", 1024), body.get("fresh", False))
    except (NatError, OSError, TimeoutError) as exc:
        raise ApiError(502, f"cannot reach the node: {exc or type(exc).__name__}") from None
    except Exception as exc:  # the transport's errors: handshake refused, session closed
        raise ApiError(502, f"cannot reach the node: {type(exc).__name__}: {exc}") from None
    return web.json_response({"ok": True, **result})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/network/reach", reach)
