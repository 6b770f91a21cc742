"""Work limits the box imposes on itself (heat, bad power, a missing data disk).

One :class:`WorkLimits` lives on the agent context. The hardware monitor (and anything else that
must cut work) sets restrictions with a named reason; the services that do the work read the
effective values before each unit of work. Several reasons can hold at once; the strictest wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Restriction:
    """What one reason asks for; ``None`` means no opinion."""

    pause_background: bool = False
    """Pause scrub, garbage collection and other background scans."""
    bandwidth_cap_bps: int | None = None
    """Cap on relay and upload bandwidth, bits per second."""
    refuse_uploads: bool = False
    """Refuse new chunks (existing ones are still served)."""
    refuse_audits: bool = False
    """Stop answering audits (only at the critical level or without a data disk)."""


@dataclass
class WorkLimits:
    """The restrictions in force, keyed by reason (``thermal``, ``disk``, ``power`` …)."""

    _by_reason: dict[str, Restriction] = field(default_factory=dict)

    def set(self, reason: str, restriction: Restriction | None) -> None:
        """Set (or with ``None`` clear) the restriction of one reason."""
        if restriction is None or restriction == Restriction():
            self._by_reason.pop(reason, None)
        else:
            self._by_reason[reason] = restriction

    def _reasons(self, attr: str) -> list[str]:
        return [r for r, x in self._by_reason.items() if getattr(x, attr)]

    @property
    def pause_background(self) -> bool:
        return bool(self._reasons("pause_background"))

    @property
    def refuse_uploads(self) -> bool:
        return bool(self._reasons("refuse_uploads"))

    @property
    def refuse_audits(self) -> bool:
        return bool(self._reasons("refuse_audits"))

    @property
    def bandwidth_cap_bps(self) -> int | None:
        caps = [x.bandwidth_cap_bps for x in self._by_reason.values() if x.bandwidth_cap_bps]
        return min(caps) if caps else None

    def why(self, attr: str) -> list[str]:
        """The reasons behind one limit, e.g. ``why("refuse_uploads") == ["thermal"]``."""
        return self._reasons(attr)

    def to_json(self) -> dict[str, Any]:
        return {
            "pause_background": self.pause_background,
            "bandwidth_cap_bps": self.bandwidth_cap_bps,
            "refuse_uploads": self.refuse_uploads,
            "refuse_audits": self.refuse_audits,
            "reasons": sorted(self._by_reason),
        }
