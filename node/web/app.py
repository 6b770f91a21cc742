"""The dashboard's aiohttp application and the agent service that serves it on ``--web``."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node import log
from node.config import parse_hostport
from node.errors import NodeError

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)
CTX_KEY: web.AppKey[AgentContext] = web.AppKey("ctx")
MAX_BODY = 64 * 1024

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _static(name: str) -> bytes:
    return resources.files("node.web").joinpath("static", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in types or "/" in name or name.startswith("."):
        raise web.HTTPNotFound(text=f"no static file {name!r}\n")
    try:
        body = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound(text=f"no static file {name!r}\n") from None
    return web.Response(body=body, content_type=types[suffix], charset="utf-8")


async def api_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CTX_KEY].status())


def make_app(ctx: AgentContext) -> web.Application:
    app = web.Application(middlewares=[security_headers], client_max_size=MAX_BODY)
    app[CTX_KEY] = ctx
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/status", api_status)
    return app


class WebService:
    """Serves the dashboard on the configured address."""

    name = "web"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        host, port = parse_hostport(self.ctx.config.web.listen)
        runner = web.AppRunner(make_app(self.ctx), access_log=None, handle_signals=False)
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
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{bound_port}/"
        self.ctx.urls["web"] = self.url

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None

    def status(self) -> dict[str, Any]:
        return {"url": self.url}
