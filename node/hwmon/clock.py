"""Whether the box's clock is good enough to mine by.

Contracts, vouchers and audits carry times, so a box must not store or prove with a clock far
off. A Raspberry Pi has no RTC: at power-on its clock starts at systemd's build time, or at
the time systemd-timesyncd saved at the last shutdown, until NTP sets it. So:

- synchronised (``/run/systemd/timesync/synchronized``, or adjtimex without ``STA_UNSYNC``):
  good;
- not synchronised, but not before the floor: good too, a box that is merely offline keeps
  mining (a clock without RTC never runs ahead by itself; it only starts behind);
- not synchronised and before the floor: far off. The floor is the later of this release's
  date (:data:`RELEASE_FLOOR`) and the time timesyncd last saved
  (``/var/lib/systemd/timesync/clock``'s mtime): the real time cannot be earlier than either.

:class:`ClockPolicy` is sans-I/O: sync readings and wall time in, state changes out; the
hardware monitor turns a far-off clock into work limits (reason ``clock``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from node.hwmon.sensors import ClockSync
from node.limits import Restriction

RELEASE_FLOOR = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
"""No clock reads earlier than this release's date; move it forward with every release."""
SAVED_CLOCK = "var/lib/systemd/timesync/clock"
LIMIT_REASON = "clock"
RESTRICTION = Restriction(pause_background=True, refuse_uploads=True, refuse_audits=True)
ACTION = (
    "connect the box to the internet so NTP can set the clock "
    "(timedatectl timesync-status shows how that goes)"
)


def clock_floor(root: Path) -> float:
    """The earliest the real time can be: this release, or the time timesyncd last saved."""
    try:
        saved = (root / SAVED_CLOCK).stat().st_mtime
    except OSError:
        saved = 0.0
    return max(RELEASE_FLOOR, saved)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def far_off(sync: ClockSync | None, now: float, floor: float) -> str | None:
    """Why the clock is too far off to mine by, or None when it will do."""
    if sync is not None and sync.synced:
        return None
    if now >= floor:
        return None
    source = sync.source if sync is not None else "unknown"
    return (
        f"the clock reads {_utc(now)}, before {_utc(floor)} (the earliest it can be), "
        f"and is not synchronised ({source})"
    )


@dataclass(frozen=True, slots=True)
class ClockChange:
    far_off: bool
    reason: str
    restriction: Restriction | None


class ClockPolicy:
    """Sans-I/O: sync state and wall time in, changes (with the work limits) out."""

    def __init__(self) -> None:
        self.far_off = False
        self.reason = "not checked yet"

    @property
    def state(self) -> str:
        return "far_off" if self.far_off else "ok"

    def update(self, sync: ClockSync | None, now: float, floor: float) -> ClockChange | None:
        why = far_off(sync, now, floor)
        if why is not None:
            self.reason = why
            if self.far_off:
                return None
            self.far_off = True
            return ClockChange(True, why, RESTRICTION)
        self.reason = (
            f"clock synchronised ({sync.source})"
            if sync is not None and sync.synced
            else f"clock not synchronised but plausible ({_utc(now)})"
        )
        if not self.far_off:
            return None
        self.far_off = False
        return ClockChange(False, self.reason, None)
