"""The box's recent events: what changed and why, for the dashboard, `doctor` and the logs.

A bounded in-memory ring (no SD-card writes); subscribers (the dashboard's live feed) get each
new event through an asyncio queue that drops the oldest entry when a slow reader falls behind.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["info", "warning", "error"]
_LEVEL_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened on the box."""

    id: int
    """Increasing sequence number."""
    ts: float
    """Wall-clock time (seconds since the epoch)."""
    level: Level
    source: str
    """The service or subsystem that reported it."""
    message: str
    """One human sentence saying what happened and why."""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """Keeps the last ``capacity`` events and fans new ones out to subscribers."""

    def __init__(self, capacity: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def emit(self, level: Level, source: str, message: str, **data: Any) -> Event:
        event = Event(next(self._ids), time.time(), level, source, message, data)
        self._events.append(event)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def recent(self, limit: int = 100, *, warnings_first: bool = False) -> list[Event]:
        """Newest first; with ``warnings_first`` errors and warnings come before infos."""
        events = list(reversed(self._events))[: max(0, limit)]
        if warnings_first:
            events.sort(key=lambda e: _LEVEL_ORDER[e.level])
        return events

    def subscribe(self, maxsize: int = 100) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)
