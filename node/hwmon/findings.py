"""Findings: one checked thing, how it stands and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["ok", "warn", "fail"]
_ORDER: dict[str, int] = {"fail": 0, "warn": 1, "ok": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """The result of one check, shown by ``doctor`` and on the dashboard."""

    level: Level
    check: str
    """Short name of what was checked (``temperature``, ``data-disk`` …)."""
    message: str
    """What was found, in one sentence."""
    action: str = ""
    """What the owner should do; empty when nothing."""

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "check": self.check,
            "message": self.message,
            "action": self.action,
        }


def worst(findings: list[Finding]) -> Level:
    """The most serious level among ``findings`` (``ok`` when empty)."""
    if not findings:
        return "ok"
    return min((f.level for f in findings), key=_ORDER.__getitem__)


def by_severity(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: _ORDER[f.level])
