"""The agent: one asyncio supervisor that runs the box's services.

Theory of operation: :func:`run_agent` locks the data dir, loads config and identity, opens
``state.db``, builds an :class:`AgentContext` shared by every service, then starts each
:class:`Service` as a supervised task. A service that raises is restarted with exponential
back-off (and an event says so); SIGTERM/SIGINT cancel every task and the agent exits within
``STOP_TIMEOUT`` seconds. Under systemd it reports READY=1, STATUS=… and WATCHDOG=1.

To add a service: implement the protocol (``name``, ``async start()`` for what must succeed
before READY — binding sockets, say — ``async run()`` that runs until cancelled, and
``status()`` for ``/api/status``) and add it in :func:`build_services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from node import __version__, config, identity, log, state
from node.errors import DataDirError, NodeError
from node.events import EventLog
from node.limits import WorkLimits
from node.sdnotify import Notifier

LOCK_FILE = "agent.lock"
RUNTIME_FILE = "agent.json"
STOP_TIMEOUT = 5.0
THREADS_TIMEOUT = 4.0
RESTART_MIN = 1.0
RESTART_MAX = 60.0

_log = log.get_logger(__name__)


class Service(Protocol):
    """A long-running part of the agent."""

    name: str

    async def start(self) -> None:
        """Acquire what the service needs (sockets, files); errors here abort agent start."""

    async def run(self) -> None:
        """Do the work until cancelled; an exception triggers a restart with back-off."""

    def status(self) -> dict[str, Any]:
        """JSON-serialisable state shown under the service's name in ``/api/status``."""


@dataclass
class AgentContext:
    """What every service shares."""

    data_dir: Path
    config: config.Config
    identity: identity.Identity
    db: sqlite_utils.Database
    events: EventLog
    started_at: float = field(default_factory=time.time)
    services: dict[str, Service] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    urls: dict[str, str] = field(default_factory=dict)
    limits: WorkLimits = field(default_factory=WorkLimits)

    def status(self) -> dict[str, Any]:
        """The agent's whole status document (``/api/status``)."""
        return {
            "node_id": self.identity.node_id_text,
            "name": self.config.node.name or os.uname().nodename,
            "version": __version__,
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "limits": self.limits.to_json(),
            "services": {name: svc.status() for name, svc in self.services.items()},
        }


class DataDirLock:
    """An exclusive ``flock`` on ``agent.lock`` so only one agent uses a data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirError(
                f"another agent is already running on {self.path.parent} "
                "(stop it first, or use another --data-dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_data_dir(data_dir: Path) -> None:
    """Fail with a one-line reason unless ``data_dir`` is a writable directory."""
    if not data_dir.exists():
        raise DataDirError(
            f"data dir {data_dir} does not exist; run `bitchat-node init --data-dir {data_dir}`"
        )
    if not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir} is not a directory")
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirError(
            f"data dir {data_dir} is not readable and writable by this user (uid {os.getuid()}); "
            f"fix its owner or mode"
        )


ServiceFactory = Callable[[AgentContext], Service]


def build_services(ctx: AgentContext) -> list[Service]:
    """Every service of the agent, in start order."""
    from node.hwmon.service import HwmonService
    from node.overlay.service import OverlayService
    from node.relays.service import RelaysService
    from node.storage_agent.service import StorageService
    from node.transport.nat.service import NatService
    from node.transport.service import TransportService
    from node.web.app import WebService

    return [
        HwmonService(ctx),
        TransportService(ctx),
        NatService(ctx),
        OverlayService(ctx),
        StorageService(ctx),
        RelaysService(ctx),
        WebService(ctx),
    ]


class Supervisor:
    """Runs services as tasks and restarts the ones that crash, with back-off."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, service: Service) -> None:
        self.restarts.setdefault(service.name, 0)
        self._tasks[service.name] = asyncio.create_task(
            self._supervise(service), name=f"service:{service.name}"
        )

    async def _supervise(self, service: Service) -> None:
        delay = RESTART_MIN
        while True:
            began = time.monotonic()
            try:
                await service.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[service.name] += 1
                if time.monotonic() - began > RESTART_MAX:
                    delay = RESTART_MIN
                _log.exception("service_crashed", service=service.name, restart_in=delay)
                self.ctx.events.emit(
                    "error",
                    service.name,
                    f"{service.name} crashed ({type(exc).__name__}: {exc}); "
                    f"restarting in {delay:.0f} s",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                with contextlib.suppress(Exception):
                    await service.start()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks.values(), timeout=STOP_TIMEOUT)


async def drain_threads(pool: ThreadPoolExecutor, timeout: float) -> bool:
    """Wait for work already handed to ``pool`` (a cancelled ``to_thread`` keeps running in
    its thread); True when it all finished within ``timeout``."""
    finished = threading.Event()

    def wait() -> None:
        pool.shutdown(wait=True)
        finished.set()

    threading.Thread(target=wait, name="agent-drain", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not finished.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return finished.is_set()


def load_config(data_dir: Path, config_path: Path | None) -> config.Config:
    return config.load(config_path or data_dir / config.CONFIG_FILE)


async def run_agent(
    data_dir: Path,
    cfg: config.Config,
    *,
    ready: Callable[[AgentContext], None] | None = None,
    services: list[ServiceFactory] | None = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``ctx.stop`` is set)."""
    check_data_dir(data_dir)
    lock = DataDirLock(data_dir)
    lock.acquire()
    notifier = Notifier()
    runtime = data_dir / RUNTIME_FILE
    # The agent's own worker threads, so that stopping can wait for the ones still using
    # state.db before closing it (closing under a running query crashes the interpreter).
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(thread_name_prefix="agent")
    loop.set_default_executor(pool)
    try:
        ident = identity.load(data_dir / identity.KEY_FILE)
        db, aside = state.open_or_set_aside(data_dir / state.STATE_FILE)
        ctx = AgentContext(data_dir, cfg, ident, db, EventLog())
        if aside is not None:
            _log.warning("state_db_corrupt", moved_to=str(aside))
            ctx.events.emit(
                "warning",
                "agent",
                f"state.db was corrupt; kept it as {aside.name} and started a fresh one "
                "(the storage index and earnings are rebuilt from the data disk)",
            )
        built = [f(ctx) for f in services] if services is not None else build_services(ctx)
        for svc in built:
            ctx.services[svc.name] = svc
        for svc in built:
            await svc.start()
        sup = Supervisor(ctx)
        for svc in built:
            sup.start(svc)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stop.set)
        runtime.write_text(
            json.dumps({"pid": os.getpid(), "node_id": ident.node_id_text, **ctx.urls}) + "\n"
        )
        ctx.events.emit("info", "agent", f"bitchat-node {__version__} started")
        _log.info("agent_ready", node_id=ident.node_id_text, **ctx.urls)
        notifier.notify(ready=1, status=f"running, node {ident.node_id_text[:12]}")
        if ready is not None:
            ready(ctx)
        interval = notifier.watchdog_interval()
        while not ctx.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), timeout=interval or 3600)
            if interval:
                notifier.notify(watchdog=1)
        _log.info("agent_stopping")
        notifier.notify(stopping=1, status="stopping")
        await sup.stop()
        if await drain_threads(pool, THREADS_TIMEOUT):
            db.conn.close()
        else:
            _log.warning("agent_threads_busy", waited_s=THREADS_TIMEOUT)
    finally:
        pool.shutdown(wait=False)
        loop.set_default_executor(ThreadPoolExecutor())
        with contextlib.suppress(FileNotFoundError):
            runtime.unlink()
        lock.release()
        notifier.close()


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """What the running agent wrote at start (pid, URLs), or None when it is not running."""
    try:
        info: dict[str, Any] = json.loads((data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


__all__ = ["AgentContext", "NodeError", "Service", "Supervisor", "run_agent"]
