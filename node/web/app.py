"""The dashboard's aiohttp application and the agent service that serves it on ``--web``.

Theory of operation: every request passes two middlewares — errors turned into
``{"error": ..., "status": ...}`` JSON, and a guard that checks the ``Host`` header (DNS
rebinding) and the client's address (``[web] access``) — and every answer gets the security
headers (strict CSP and friends) as it is prepared. Read-only routes are open to whoever
passes the guard; ``POST /api/actions/*`` also needs the admin token as ``Authorization:
Bearer``. Handlers are thin over :mod:`node.web.providers`; the page (``static/``) is filled
from the same JSON API and then kept live by ``/api/events/stream`` (server-sent events: one
event per changed section, one per new box event).

Other parts of the agent add their own routes with one ``add_routes(app)`` line in
:func:`make_app`.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node import __version__, log
from node.config import parse_hostport
from node.errors import NodeError
from node.web import providers
from node.web.mdns import Announcer
from node.web.metrics import CONTENT_TYPE as METRICS_TYPE
from node.web.metrics import Metrics
from node.web.openapi import spec
from node.web.security import AdminToken, HostPolicy, lan_addresses, peer_allowed

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)
CTX_KEY: web.AppKey[AgentContext] = web.AppKey("ctx")
MAX_BODY = 64 * 1024
ACTION_MAX_BODY = 4096
MAX_STREAMS = 32
MAX_EVENTS = 500
SHUTDOWN_DELAY_S = 0.3
LIVE_CONTRACTS = 20
"""Contracts listed in the live feed's storage section (all are counted)."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
SECTIONS = ("earnings", "storage", "network", "hardware")


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a one-line message for the client."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class WebState:
    """What the application keeps between requests."""

    hosts: HostPolicy
    token: AdminToken
    metrics: Metrics = field(default_factory=Metrics)
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    snap: dict[str, dict[str, Any]] | None = None
    snap_at: float = 0.0
    snap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refused_at: float = 0.0

    async def snapshot(self, ctx: AgentContext, max_age: float) -> dict[str, dict[str, Any]]:
        """All sections, shared by the live streams (computed at most once per ``max_age``)."""
        async with self.snap_lock:
            now = time.monotonic()
            if self.snap is None or now - self.snap_at >= max_age:
                self.snap = await providers.snapshot(ctx, contracts=LIVE_CONTRACTS)
                self.snap_at = now
            return self.snap


STATE_KEY: web.AppKey[WebState] = web.AppKey("web_state")


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, dumps=_dumps)


# -- middlewares ------------------------------------------------------------------------


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Added to every answer as it is prepared, streams and errors included."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.path.startswith("/api/") or request.path == "/metrics":
        response.headers.setdefault("Cache-Control", "no-store")


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    path = request.path[:200]
    if exc.status == 404:
        return f"no such page or endpoint: {path!r}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"method {request.method[:20]!r} is not allowed on {path!r}; use {allowed}"
    if exc.status == 413:
        return f"request body too large (at most {MAX_BODY} bytes)"
    text = (exc.text or exc.reason or "").strip().removeprefix(f"{exc.status}: ")
    return " ".join(text.split()) or exc.reason


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        resp = _json({"error": exc.message, "status": exc.status}, exc.status)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _json({"error": _http_message(exc, request), "status": exc.status}, exc.status)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        _log.exception("web_handler_failed", path=repr(request.path[:200]), error=str(exc))
        return _json({"error": f"internal error: {type(exc).__name__}", "status": 500}, 500)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    state = request.app[STATE_KEY]
    if not peer_allowed(ctx.config.web.access, request.remote):
        raise ApiError(
            403,
            f"the dashboard is open to {ctx.config.web.access!r} clients only "
            "([web] access); this client's address is not one of them",
        )
    host = request.headers.get("Host")
    if not state.hosts.allows(host):
        shown = (host or "")[:80]
        raise ApiError(
            403,
            f"Host {shown!r} is not a name of this box; open it by its address or "
            "<hostname>.local, or add the name to [web] allowed_hosts",
        )
    response: web.StreamResponse = await handler(request)
    return response


# -- request parsing --------------------------------------------------------------------

Parser = Callable[[str], Any]


def parse_query(request: web.Request, allowed: dict[str, Parser]) -> dict[str, Any]:
    """Validated query parameters; unknown, repeated or bad ones give a 400."""
    out: dict[str, Any] = {}
    for key in request.query:
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, f"unknown query parameter {key[:40]!r}; allowed: {names}")
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} given more than once")
        try:
            out[key] = allowed[key](values[0])
        except ValueError as exc:
            raise ApiError(400, f"query parameter {key!r}: {exc}") from None
    return out


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {text[:40]!r}")
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text[:40]!r}")
        return text

    return parse


async def json_body(
    request: web.Request, fields: dict[str, Callable[[Any], Any]]
) -> dict[str, Any]:
    """A small JSON object body with only the named fields, each checked by its function."""
    if request.content_length is not None and request.content_length > ACTION_MAX_BODY:
        raise ApiError(413, f"request body too large (at most {ACTION_MAX_BODY} bytes)")
    raw = b""
    while chunk := await request.content.read(ACTION_MAX_BODY + 1 - len(raw)):
        raw += chunk
        if len(raw) > ACTION_MAX_BODY:
            raise ApiError(413, f"request body too large (at most {ACTION_MAX_BODY} bytes)")
    if not raw.strip():
        doc: Any = {}
    else:
        ctype = request.content_type
        if ctype != "application/json":
            raise ApiError(415, f"send the body as application/json, not {ctype[:60]!r}")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "body is not UTF-8 text") from None
        except ValueError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"body must be a JSON object, not {type(doc).__name__}")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in fields:
            names = ", ".join(sorted(fields)) or "none"
            raise ApiError(400, f"unknown field {key[:40]!r}; allowed: {names}")
        try:
            out[key] = fields[key](value)
        except ValueError as exc:
            raise ApiError(400, f"field {key!r}: {exc}") from None
    return out


def number_in(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {value!r:.40}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {value!r:.40}")
        return float(value)

    return check


def integer_in(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value!r:.40}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r:.40}")
    return value


# -- page -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gz: bytes
    etag: str
    content_type: str


_ASSETS: dict[str, _Asset] = {}


def _asset(name: str, content_type: str) -> _Asset:
    cached = _ASSETS.get(name)
    if cached is None:
        body = resources.files("node.web").joinpath("static", name).read_bytes()
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        cached = _Asset(body, gzip.compress(body, 9, mtime=0), etag, content_type)
        _ASSETS[name] = cached
    return cached


def _serve(request: web.Request, asset: _Asset) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gz
        headers["Content-Encoding"] = "gzip"
    return web.Response(
        body=body, headers=headers, content_type=asset.content_type, charset="utf-8"
    )


async def index(request: web.Request) -> web.Response:
    parse_query(request, {})
    return _serve(request, _asset("index.html", "text/html"))


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    ok = suffix in STATIC_TYPES and name.isascii() and "/" not in name and "\\" not in name
    if not ok or name.startswith(".") or ".." in name:
        raise ApiError(404, f"no static file {name[:80]!r}")
    try:
        asset = _asset(name, STATIC_TYPES[suffix])
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ApiError(404, f"no static file {name[:80]!r}") from None
    return _serve(request, asset)


# -- read-only API ----------------------------------------------------------------------


async def api_status(request: web.Request) -> web.Response:
    parse_query(request, {})
    return _json(providers.status(request.app[CTX_KEY]))


def _section_handler(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        params = {"contracts": int_in(0, 100_000)} if name == "storage" else {}
        q = parse_query(request, params)
        doc = await providers.section(request.app[CTX_KEY], name)
        if "contracts" in q:
            doc = providers.trim_contracts(doc, q["contracts"])
        return _json(doc)

    handler.__name__ = f"api_{name}"
    return handler


def _event_json(event: Any) -> dict[str, Any]:
    doc: dict[str, Any] = providers.clean(event.to_json())
    return doc


async def api_events(request: web.Request) -> web.Response:
    q = parse_query(
        request,
        {
            "limit": int_in(1, MAX_EVENTS),
            "level": one_of("info", "warning", "error"),
            "after": int_in(0, 2**63 - 1),
        },
    )
    ctx = request.app[CTX_KEY]
    order = {"info": 2, "warning": 1, "error": 0}
    worst = order[q.get("level", "info")]
    after = q.get("after", 0)
    events = [
        _event_json(e)
        for e in ctx.events.recent(MAX_EVENTS, warnings_first=True)
        if order[e.level] <= worst and e.id > after
    ][: q.get("limit", 100)]
    return _json({"events": events})


async def api_earnings_export(request: web.Request) -> web.Response:
    fmt = parse_query(request, {"format": one_of("csv", "json")}).get("format", "csv")
    ctx = request.app[CTX_KEY]
    try:
        data = await providers.call(ctx, "storage", "earnings_export", fmt)
    except LookupError as exc:
        raise ApiError(503, f"no earnings to export: {exc}") from None
    except NodeError as exc:
        raise ApiError(503, f"cannot export earnings: {exc}") from None
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes):
        raise ApiError(502, "the storage service returned no export file")
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    filename = f"bitchat-earnings-{ctx.identity.node_id_text[:12]}-{day}.{fmt}"
    return web.Response(
        body=data,
        content_type="text/csv" if fmt == "csv" else "application/json",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def api_openapi(request: web.Request) -> web.Response:
    parse_query(request, {})
    return _json(spec(__version__))


async def metrics(request: web.Request) -> web.Response:
    parse_query(request, {})
    ctx = request.app[CTX_KEY]
    body = request.app[STATE_KEY].metrics.render(await providers.snapshot(ctx))
    return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})


def _last_event_id(request: web.Request) -> int:
    text = request.headers.get("Last-Event-ID")
    if text is None or text == "":
        return 0
    try:
        return int_in(0, 2**63 - 1)(text.strip())
    except ValueError as exc:
        raise ApiError(400, f"header Last-Event-ID: {exc}") from None


async def _send(resp: web.StreamResponse, kind: str, doc: Any, event_id: int | None = None) -> None:
    head = f"id: {event_id}\n" if event_id is not None else ""
    await resp.write(f"{head}event: {kind}\ndata: {_dumps(doc)}\n\n".encode())


async def api_events_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: changed sections every ``live_interval`` and each new event."""
    parse_query(request, {})
    ctx = request.app[CTX_KEY]
    state = request.app[STATE_KEY]
    last_id = _last_event_id(request)
    if len(state.streams) >= MAX_STREAMS:
        raise ApiError(503, f"too many live dashboards open (at most {MAX_STREAMS}); close one")
    task = asyncio.current_task()
    assert task is not None
    interval = ctx.config.web.live_interval
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    queue = ctx.events.subscribe()
    state.streams.add(task)
    loop = asyncio.get_running_loop()
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        for event in reversed(ctx.events.recent(MAX_EVENTS)):
            if last_id and event.id > last_id:
                await _send(resp, "event", _event_json(event), event.id)
        sent: dict[str, str] = {}
        while True:
            snap = await state.snapshot(ctx, interval / 2)
            for name, doc in snap.items():
                text = _dumps(doc)
                if sent.get(name) != text:
                    await resp.write(f"event: {name}\ndata: {text}\n\n".encode())
                    sent[name] = text
            deadline = loop.time() + interval
            while (left := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                await _send(resp, "event", _event_json(event), event.id)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        ctx.events.unsubscribe(queue)
        state.streams.discard(task)
    return resp


# -- actions ----------------------------------------------------------------------------


def authorize(request: web.Request, action: str) -> None:
    state = request.app[STATE_KEY]
    ctx = request.app[CTX_KEY]
    if not state.token.configured():
        raise ApiError(
            403,
            "this box has no admin token; create one with `bitchat-node init` "
            "(it is stored in DATA_DIR/admin.token)",
        )
    header = request.headers.get("Authorization")
    if state.token.check(header):
        return
    now = time.monotonic()
    if now - state.refused_at > 10.0:
        state.refused_at = now
        ctx.events.emit(
            "warning",
            "web",
            f"refused action {action}: missing or wrong admin token",
            client=request.remote or "",
        )
    _log.warning("action_refused", action=action, client=request.remote or "")
    message = (
        "this action needs the admin token as 'Authorization: Bearer <token>'"
        if not header
        else "wrong admin token"
    )
    raise ApiError(401, message, **{"WWW-Authenticate": 'Bearer realm="bitchat-node"'})


async def _provider_action(ctx: AgentContext, service: str, method: str, *args: Any) -> None:
    try:
        await providers.call(ctx, service, method, *args)
    except LookupError as exc:
        raise ApiError(503, str(exc)) from None
    except (NodeError, ValueError) as exc:
        raise ApiError(409, f"the {service} service refused: {exc}") from None


def _done(action: str, message: str, status: int = 200, **extra: Any) -> web.Response:
    return _json({"ok": True, "action": action, "message": message, **extra}, status)


async def action_identify(request: web.Request) -> web.Response:
    authorize(request, "identify")
    body = await json_body(request, {"seconds": number_in(1, 600)})
    seconds = body.get("seconds", 10.0)
    ctx = request.app[CTX_KEY]
    state = request.app[STATE_KEY]
    task = asyncio.ensure_future(_provider_action(ctx, "hwmon", "identify", seconds))
    state.background.add(task)
    task.add_done_callback(state.background.discard)
    # Report what fails at once (no hwmon service, refused); the blink itself runs on.
    done, _ = await asyncio.wait({task}, timeout=0.5)
    if done:
        task.result()
    ctx.events.emit("info", "web", f"identify: the LEDs blink for {seconds:g} s")
    return _done("identify", f"the LEDs blink for {seconds:g} s", 202, seconds=seconds)


async def action_allocation(request: web.Request) -> web.Response:
    authorize(request, "allocation")
    body = await json_body(request, {"bytes": integer_in(0, 2**62)})
    if "bytes" not in body:
        raise ApiError(400, "field 'bytes' is required (the allocation in bytes)")
    ctx = request.app[CTX_KEY]
    await _provider_action(ctx, "storage", "set_allocation", body["bytes"])
    ctx.events.emit("info", "web", f"allocation set to {body['bytes']} bytes by the owner")
    return _done("allocation", f"allocation set to {body['bytes']} bytes", bytes=body["bytes"])


async def action_pause(request: web.Request) -> web.Response:
    authorize(request, "pause")
    body = await json_body(request, {"paused": boolean})
    if "paused" not in body:
        raise ApiError(400, "field 'paused' is required (true or false)")
    ctx = request.app[CTX_KEY]
    await _provider_action(ctx, "storage", "pause", body["paused"])
    what = "paused" if body["paused"] else "resumed"
    ctx.events.emit("info", "web", f"storage {what} by the owner")
    return _done("pause", f"storage {what}", paused=body["paused"])


async def action_shutdown(request: web.Request) -> web.Response:
    authorize(request, "shutdown")
    await json_body(request, {})
    ctx = request.app[CTX_KEY]
    ctx.events.emit("warning", "web", "graceful exit requested from the dashboard")
    _log.info("shutdown_requested", client=request.remote or "")
    # Let this answer leave before the agent stops the web service.
    asyncio.get_running_loop().call_later(SHUTDOWN_DELAY_S, ctx.stop.set)
    return _done("shutdown", "the agent is stopping", 202)


async def action_rotate_token(request: web.Request) -> web.Response:
    authorize(request, "rotate-token")
    await json_body(request, {})
    ctx = request.app[CTX_KEY]
    try:
        token = request.app[STATE_KEY].token.rotate()
    except OSError as exc:
        raise ApiError(503, f"cannot write the new admin token: {exc.strerror}") from None
    ctx.events.emit("warning", "web", "the admin token was rotated; the old one no longer works")
    return _done("rotate-token", "new admin token issued; the old one no longer works", token=token)


# -- application ------------------------------------------------------------------------


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE_KEY]
    for task in list(state.streams) + list(state.background):
        task.cancel()


def make_app(ctx: AgentContext) -> web.Application:
    app = web.Application(middlewares=[json_errors, guard], client_max_size=MAX_BODY)
    app.on_response_prepare.append(security_headers)
    app[CTX_KEY] = ctx
    app[STATE_KEY] = WebState(
        hosts=HostPolicy(ctx.config.web.allowed_hosts),
        token=AdminToken(ctx.data_dir),
    )
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/status", api_status)
    from node.storage_agent.http import add_routes as add_storage_routes

    add_storage_routes(app)
    for name in SECTIONS:
        app.router.add_get(f"/api/{name}", _section_handler(name))
    app.router.add_get("/api/earnings/export", api_earnings_export)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/events/stream", api_events_stream)
    app.router.add_get("/api/openapi.json", api_openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/actions/identify", action_identify)
    app.router.add_post("/api/actions/allocation", action_allocation)
    app.router.add_post("/api/actions/pause", action_pause)
    app.router.add_post("/api/actions/shutdown", action_shutdown)
    app.router.add_post("/api/actions/rotate-token", action_rotate_token)
    from node.relays.http import add_routes as add_relay_routes

    add_relay_routes(app)
    from node.transport.nat.http import add_routes as add_nat_routes

    add_nat_routes(app)
    return app


def mdns_addresses(host: str) -> list[str]:
    """The addresses to announce for a dashboard bound to ``host`` (none for loopback)."""
    import ipaddress

    if host in ("", "0.0.0.0"):
        return [a for a in lan_addresses() if ipaddress.ip_address(a).version == 4]
    if host == "::":
        return lan_addresses()
    if host == "localhost":
        return []
    ip = ipaddress.ip_address(host)
    return [] if ip.is_loopback else [str(ip)]


class WebService:
    """Serves the dashboard on the configured address and announces it by mDNS."""

    name = "web"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.port: int | None = None
        self._announcer: Announcer | None = None
        self._mdns_state = "starting"

    async def start(self) -> None:
        if self._runner is not None:
            return
        host, port = parse_hostport(self.ctx.config.web.listen)
        runner = web.AppRunner(
            make_app(self.ctx), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NodeError(
                f"cannot serve the dashboard on {host}:{port}: {exc.strerror}; "
                "choose another address with --web or [web] listen"
            ) from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        self.port = bound_port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound_port}/"
        self.ctx.urls["web"] = self.url

    async def _announce(self) -> None:
        from node.web.mdns import default_hostname

        host, _ = parse_hostport(self.ctx.config.web.listen)
        if not self.ctx.config.web.mdns:
            self._mdns_state = "off ([web] mdns = false)"
            return
        if not mdns_addresses(host):
            loopback = host not in ("", "0.0.0.0", "::")
            self._mdns_state = (
                "off: the dashboard listens on loopback only"
                if loopback
                else "off: this box had no LAN address when the agent started"
            )
            _log.info("mdns_off", reason=self._mdns_state)
            return
        assert self.port is not None
        announcer = Announcer(
            hostname=default_hostname(),
            port=self.port,
            node_id=self.ctx.identity.node_id_text,
            version=__version__,
            addresses=lambda: mdns_addresses(host),
        )
        self._announcer = announcer
        try:
            await announcer.run()
        except Exception as exc:
            self._announcer = None
            self._mdns_state = f"failed: {exc}"
            self.ctx.events.emit(
                "warning",
                "web",
                f"mDNS announcement failed ({exc}); open the dashboard by the box's address",
            )
            _log.warning("mdns_failed", error=str(exc))

    async def run(self) -> None:
        try:
            await self._announce()
            await asyncio.Event().wait()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None

    @property
    def mdns(self) -> str:
        """What the mDNS announcement is doing, in words."""
        if self._announcer is None:
            return self._mdns_state
        if self._announcer.name:
            return f"announced as {self._announcer.name} on {', '.join(self._announcer.announced)}"
        return "probing the LAN for name conflicts"

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "mdns": self.mdns, "access": self.ctx.config.web.access}
