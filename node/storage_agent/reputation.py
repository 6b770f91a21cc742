"""Reputation a verifier keeps for each storage node (sans-I/O).

Audit score and unknown-audit score are beta reputations with forgetting, as in Storj's
storage node reputation: after each audit ``alpha = lam * alpha + w * ok`` and
``beta = lam * beta + w * (1 - ok)``; the score is ``alpha / (alpha + beta)``. Outcomes feed
them as follows: success -> audit ok and unknown ok; fail -> audit not ok; timeout and offline
-> unknown not ok (the node may be rebooting: that is not proof of loss). The online score is
the mean, over the last ``online_windows`` windows of ``online_window`` seconds, of the fraction
of audits in the window that reached the node.

Our thresholds (see docs/storage.md for why): a node whose audit score falls below
``AUDIT_DQ`` is disqualified (its shares are repaired elsewhere and it gets no new ones); an
unknown-audit or online score below ``SUSPEND`` suspends it (no new shares until it recovers).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from node.storage_agent.audit import Outcome

LAMBDA = 0.98
"""Forgetting factor: an audit's weight halves after about 34 later audits."""
WEIGHT = 1.0
AUDIT_DQ = 0.90
SUSPEND = 0.60
ONLINE_WINDOW = 12 * 3600.0
ONLINE_WINDOWS = 60


INITIAL_ALPHA = 1 / (1 - LAMBDA)
"""A new node starts as if it had passed a full window of audits (as Storj does), so that one
early bad audit does not disqualify it on the spot."""


@dataclass
class NodeReputation:
    alpha: float = INITIAL_ALPHA
    beta: float = 0.0
    unknown_alpha: float = INITIAL_ALPHA
    unknown_beta: float = 0.0
    windows: deque[tuple[int, int, int]] = field(default_factory=deque)
    """(window number, audits reaching the node, audits attempted)."""
    disqualified_at: float | None = None
    audits: int = 0

    @property
    def audit_score(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def unknown_score(self) -> float:
        return self.unknown_alpha / (self.unknown_alpha + self.unknown_beta)

    def online_score(self) -> float:
        if not self.windows:
            return 1.0
        return sum(ok / max(1, n) for _, ok, n in self.windows) / len(self.windows)

    @property
    def suspended(self) -> bool:
        return self.unknown_score < SUSPEND or self.online_score() < SUSPEND

    @property
    def disqualified(self) -> bool:
        return self.disqualified_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "audit": round(self.audit_score, 4),
            "unknown": round(self.unknown_score, 4),
            "online": round(self.online_score(), 4),
            "audits": self.audits,
            "suspended": self.suspended,
            "disqualified": self.disqualified,
        }


@dataclass
class Reputation:
    """Scores of many nodes, keyed by node key (or id)."""

    lam: float = LAMBDA
    online_window: float = ONLINE_WINDOW
    online_windows: int = ONLINE_WINDOWS
    nodes: dict[bytes, NodeReputation] = field(default_factory=dict)

    def get(self, node: bytes) -> NodeReputation:
        return self.nodes.setdefault(node, NodeReputation())

    def record(self, node: bytes, outcome: Outcome, now: float) -> NodeReputation:
        """Apply one audit outcome; returns the node's updated reputation."""
        rep = self.get(node)
        rep.audits += 1
        lam = self.lam
        if outcome in (Outcome.SUCCESS, Outcome.FAIL):
            ok = 1.0 if outcome is Outcome.SUCCESS else 0.0
            rep.alpha = lam * rep.alpha + WEIGHT * ok
            rep.beta = lam * rep.beta + WEIGHT * (1.0 - ok)
            rep.unknown_alpha = lam * rep.unknown_alpha + WEIGHT
            rep.unknown_beta = lam * rep.unknown_beta
        else:
            rep.unknown_alpha = lam * rep.unknown_alpha
            rep.unknown_beta = lam * rep.unknown_beta + WEIGHT
        window = int(now // self.online_window)
        reached = 0 if outcome is Outcome.OFFLINE else 1
        if rep.windows and rep.windows[-1][0] == window:
            _, ok_n, n = rep.windows[-1]
            rep.windows[-1] = (window, ok_n + reached, n + 1)
        else:
            rep.windows.append((window, reached, 1))
        while rep.windows and rep.windows[0][0] <= window - self.online_windows:
            rep.windows.popleft()
        if rep.disqualified_at is None and rep.audit_score < AUDIT_DQ:
            rep.disqualified_at = now
        return rep


THRESHOLDS = {"audit": AUDIT_DQ, "online": SUSPEND, "suspension": SUSPEND}
