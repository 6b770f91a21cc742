"""Fixtures of the dashboard tests: a real AgentContext on a temp data dir, and its web app."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node import config, identity, state
from node.agent import AgentContext
from node.cli import init_data_dir
from node.events import EventLog
from node.web.app import make_app


def make_ctx(data_dir: Path, **web_keys: object) -> AgentContext:
    """An agent context as run_agent builds it, without services."""
    if not (data_dir / identity.KEY_FILE).exists():
        init_data_dir(data_dir)
    cfg = config.Config()
    if web_keys:
        cfg = dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, **web_keys))
    ident = identity.load(data_dir / identity.KEY_FILE)
    db = state.open_state(data_dir / state.STATE_FILE)
    return AgentContext(data_dir, cfg, ident, db, EventLog())


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AgentContext]:
    context = make_ctx(tmp_path / "box")
    yield context
    context.db.conn.close()


@pytest.fixture
def token(ctx: AgentContext) -> str:
    return (ctx.data_dir / "admin.token").read_text().strip()


@pytest.fixture
async def client(ctx: AgentContext) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(make_app(ctx))) as c:
        yield c


@dataclasses.dataclass
class ThreadedServer:
    """The dashboard app on a real TCP port, served by an event loop in a thread."""

    ctx: AgentContext
    port: int
    token: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """For synchronous (hypothesis) tests that send raw HTTP requests."""
    ctx = make_ctx(tmp_path_factory.mktemp("web") / "box")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        runner = web.AppRunner(make_app(ctx), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    ready.wait(10)
    token = (ctx.data_dir / "admin.token").read_text().strip()
    try:
        yield ThreadedServer(ctx, int(holder["port"]), token)  # type: ignore[call-overload]
    finally:
        runner = holder["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        ctx.db.conn.close()


def seed_earnings(data_dir: Path, days: int = 12) -> None:
    """Put real signed vouchers of a payer into the box's ledger, one per day back from today."""
    import time

    from node.storage_agent.ledger import Ledger
    from node.storage_agent.store import ChunkStore
    from node.storage_agent.vouchers import Voucher

    box = identity.load(data_dir / identity.KEY_FILE)
    payer = identity.Identity.generate()
    store = ChunkStore(data_dir, box.node_id_text)
    store.initialise(expect_existing=False)
    db = state.open_state(data_dir / state.STATE_FILE)
    try:
        ledger = Ledger(db, box.node_id, store.vouchers)
        now = time.time()
        totals = {"storage": 0, "egress": 0, "relay": 0}
        for seq, back in enumerate(range(days - 1, -1, -1), start=1):
            totals["storage"] += 150_000 + 10_000 * seq
            totals["egress"] += 40_000 + 5_000 * (seq % 4)
            totals["relay"] += 20_000 * (seq % 3)
            v = Voucher(payer.public_key, box.node_id, seq, int(now - back * 86400), **totals)
            ledger.accept(v.signed(payer), now)
    finally:
        db.conn.close()
