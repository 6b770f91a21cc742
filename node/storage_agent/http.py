"""HTTP routes of the storage service: upload and download of (client-encrypted) files.

``POST /api/storage/files`` takes the ciphertext as the request body, read in bounded pieces
(never whole in memory), and answers ``{"record": <hex>}``; ``GET /api/storage/files/<record>``
streams the ciphertext back. Both need the admin token (``Authorization: Bearer``), since the
box pays the network for what it stores and fetches. ``GET /api/storage/export?format=json|csv``
exports the newest voucher per channel for settlement.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from node import log
from node.storage_agent.errors import StorageError
from node.storage_agent.store import parse_id

if TYPE_CHECKING:
    from node.storage_agent.service import StorageService

_log = log.get_logger(__name__)
PIECE = 256 * 1024
MAX_UPLOAD = 64 * 1024**3
ADMIN_TOKEN_FILE = "admin.token"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def _service(request: web.Request) -> StorageService:
    from node.web.app import CTX_KEY

    svc = request.app[CTX_KEY].services.get("storage")
    if svc is None:
        raise LookupError("the storage service is not running in this agent")
    return svc  # type: ignore[return-value]


def _authorised(request: web.Request) -> bool:
    from node.web.app import CTX_KEY

    path = request.app[CTX_KEY].data_dir / ADMIN_TOKEN_FILE
    try:
        expected = path.read_bytes().strip()
    except OSError:
        return False
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)


async def upload(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _error(401, "uploads need the admin token (Authorization: Bearer <token>)")
    try:
        svc = _service(request)
    except LookupError as exc:
        return _error(503, str(exc))
    length = request.content_length
    if length is not None and length > MAX_UPLOAD:
        return _error(413, f"upload of {length} bytes exceeds the limit of {MAX_UPLOAD}")

    async def body() -> AsyncIterator[bytes]:
        seen = 0
        while piece := await request.content.read(PIECE):
            seen += len(piece)
            if seen > MAX_UPLOAD:
                raise StorageError(f"upload exceeds the limit of {MAX_UPLOAD} bytes")
            yield piece

    try:
        record = await svc.placer.put(body())
    except StorageError as exc:
        _log.info("upload_failed", error=str(exc))
        return _error(507 if "no node" in str(exc) else 400, str(exc))
    return web.json_response({"record": record.hex()})


async def download(request: web.Request) -> web.StreamResponse:
    if not _authorised(request):
        return _error(401, "downloads need the admin token (Authorization: Bearer <token>)")
    try:
        record = parse_id(request.match_info["record"])
        svc = _service(request)
    except ValueError as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(503, str(exc))
    stripes = svc.placer.get(record)
    try:
        first = await anext(stripes, b"")
    except StorageError as exc:
        return _error(404, str(exc))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write(first)
    try:
        async for piece in stripes:
            await response.write(piece)
    except StorageError as exc:
        # Headers are gone: cut the stream short so the client sees an incomplete body.
        _log.warning("download_failed", error=str(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def export(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, "format must be json or csv")
    try:
        svc = _service(request)
    except LookupError as exc:
        return _error(503, str(exc))
    body = svc.earnings_export(fmt)
    ctype = "application/json" if fmt == "json" else "text/csv"
    return web.Response(
        body=body,
        content_type=ctype,
        headers={"Content-Disposition": f'attachment; filename="earnings.{fmt}"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/storage/files", upload)
    app.router.add_get("/api/storage/files/{record}", download)
    app.router.add_get("/api/storage/export", export)
