from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from node import config
from node.agent import AgentContext, run_agent
from node.sdnotify import Notifier
from tests.support import RunningAgent


class Flaky:
    """A service that crashes on its first two runs, then runs until cancelled."""

    name = "flaky"

    def __init__(self, ctx: AgentContext) -> None:
        self.runs = 0
        self.ctx = ctx

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= 2:
            raise RuntimeError(f"boom {self.runs}")
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {"runs": self.runs}


async def test_crashed_service_is_restarted_with_backoff(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("node.agent.RESTART_MIN", 0.05)
    seen: list[AgentContext] = []
    task = asyncio.create_task(
        run_agent(data_dir, config.Config(), ready=seen.append, services=[Flaky])
    )
    for _ in range(200):
        await asyncio.sleep(0.02)
        if seen and seen[0].services["flaky"].status()["runs"] >= 3:
            break
    ctx = seen[0]
    assert ctx.services["flaky"].status()["runs"] == 3
    messages = [e.message for e in ctx.events.recent()]
    assert any("flaky crashed (RuntimeError: boom 1); restarting in" in m for m in messages)
    assert any("boom 2" in m for m in messages)
    ctx.stop.set()
    await asyncio.wait_for(task, 10)
    assert not (data_dir / "agent.json").exists()


class SlowQuery:
    """A service whose thread is still querying state.db when the agent stops."""

    name = "slow"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.started = threading.Event()
        self.result: object = None

    async def start(self) -> None:
        pass

    def _query(self) -> None:
        self.started.set()
        time.sleep(0.5)
        try:
            self.result = self.ctx.db.execute("select 42").fetchone()[0]
        except Exception as exc:  # the test reports what happened
            self.result = exc

    async def run(self) -> None:
        await asyncio.to_thread(self._query)
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {}


async def test_stop_waits_for_threads_still_using_the_database(data_dir: Path) -> None:
    seen: list[AgentContext] = []
    task = asyncio.create_task(
        run_agent(data_dir, config.Config(), ready=seen.append, services=[SlowQuery])
    )
    while not seen:
        await asyncio.sleep(0.01)
    slow = seen[0].services["slow"]
    assert isinstance(slow, SlowQuery)
    await asyncio.to_thread(slow.started.wait, 5)
    seen[0].stop.set()
    await asyncio.wait_for(task, 10)
    assert slow.result == 42
    # The caller's loop still has a working default executor afterwards.
    assert await asyncio.to_thread(lambda: 7) == 7


def test_sigterm_stops_within_a_few_seconds(agent: RunningAgent) -> None:
    began = time.monotonic()
    code = agent.stop(signal.SIGTERM, timeout=10)
    assert code == 0
    assert time.monotonic() - began < 10
    assert "agent_stopping" in agent.log()


def test_sigint_stops_too(agent: RunningAgent) -> None:
    assert agent.stop(signal.SIGINT, timeout=10) == 0


async def test_systemd_notify_protocol(data_dir: Path, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.setblocking(False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTIFY_SOCKET", str(sock_path))
        mp.setenv("WATCHDOG_USEC", "200000")
        seen: list[AgentContext] = []
        task = asyncio.create_task(
            run_agent(data_dir, config.Config(), ready=seen.append, services=[])
        )
        messages: list[str] = []
        loop = asyncio.get_running_loop()
        while sum("WATCHDOG=1" in m for m in messages) < 2:
            data = await asyncio.wait_for(loop.sock_recv(server, 4096), 5)
            messages.append(data.decode())
        seen[0].stop.set()
        await asyncio.wait_for(task, 10)
        while True:
            try:
                messages.append(server.recv(4096).decode())
            except BlockingIOError:
                break
    server.close()
    assert messages[0].startswith("READY=1\nSTATUS=running, node ")
    assert "STOPPING=1\nSTATUS=stopping" in messages


def test_notifier_abstract_socket_and_disabled() -> None:
    assert not Notifier("").enabled
    assert not Notifier("").notify(ready=1)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"bitchat-test-{time.monotonic_ns()}"
    server.bind("\0" + name)
    notifier = Notifier("@" + name)
    assert notifier.notify(status="hi")
    assert server.recv(100) == b"STATUS=hi"
    notifier.close()
    server.close()
