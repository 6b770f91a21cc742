"""Thermal policy: levels with hysteresis, the fan curve and the work each level cuts.

Theory of operation: :class:`ThermalPolicy` is fed one SoC temperature and the current time per
poll (``update(temp_c, now)``) and does no I/O. A level is entered as soon as its threshold is
reached. It is left only when the temperature has stayed below ``threshold - hysteresis`` for
``cool_down_s`` seconds, so a box hovering at a threshold does not flap. Each level cuts more
work (:func:`restriction_for`):

==========  ==============================================================================
normal      nothing
warm        pause scrub, garbage collection and other background scans
hot         also cap relay and upload bandwidth, refuse new uploads
critical    also stop answering audits (the box protects itself first)
==========  ==============================================================================

The fan runs on its own curve below ``warm`` (linear from ``fan_min_duty`` at ``fan_start_c``
to 100 % at ``warm_c``, off again only ``hysteresis_c`` below the start) and at 100 % from
``warm`` up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from node.config import HwmonSection
from node.errors import ConfigError
from node.limits import Restriction


class ThermalLevel(IntEnum):
    NORMAL = 0
    WARM = 1
    HOT = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ThermalConfig:
    warm_c: float = 65.0
    hot_c: float = 75.0
    critical_c: float = 85.0
    hysteresis_c: float = 5.0
    cool_down_s: float = 30.0
    hot_bandwidth_cap_bps: int = 2_000_000
    fan_start_c: float = 50.0
    fan_min_duty: float = 30.0

    def __post_init__(self) -> None:
        if not self.warm_c < self.hot_c < self.critical_c:
            raise ConfigError(
                f"[hwmon] thresholds must rise: warm_c {self.warm_c} < hot_c {self.hot_c} "
                f"< critical_c {self.critical_c}"
            )
        if self.fan_start_c >= self.warm_c:
            raise ConfigError(
                f"[hwmon] fan_start_c {self.fan_start_c} must be below warm_c {self.warm_c}"
            )

    @classmethod
    def from_section(cls, s: HwmonSection) -> ThermalConfig:
        return cls(
            warm_c=s.warm_c,
            hot_c=s.hot_c,
            critical_c=s.critical_c,
            hysteresis_c=s.hysteresis_c,
            cool_down_s=s.cool_down_s,
            hot_bandwidth_cap_bps=s.hot_bandwidth_cap_kbps * 1000,
            fan_start_c=s.fan_start_c,
            fan_min_duty=s.fan_min_duty,
        )

    def threshold(self, level: ThermalLevel) -> float:
        return {
            ThermalLevel.NORMAL: float("-inf"),
            ThermalLevel.WARM: self.warm_c,
            ThermalLevel.HOT: self.hot_c,
            ThermalLevel.CRITICAL: self.critical_c,
        }[level]


def restriction_for(level: ThermalLevel, cfg: ThermalConfig) -> Restriction | None:
    """The work limits of one level (None at normal)."""
    if level == ThermalLevel.NORMAL:
        return None
    if level == ThermalLevel.WARM:
        return Restriction(pause_background=True)
    return Restriction(
        pause_background=True,
        bandwidth_cap_bps=cfg.hot_bandwidth_cap_bps,
        refuse_uploads=True,
        refuse_audits=level == ThermalLevel.CRITICAL,
    )


_ACTIONS = {
    ThermalLevel.NORMAL: "all work resumes",
    ThermalLevel.WARM: "background scans paused",
    ThermalLevel.HOT: "background scans paused, bandwidth capped, new uploads refused",
    ThermalLevel.CRITICAL: "all work stopped including audits",
}


@dataclass(frozen=True, slots=True)
class LevelChange:
    """The policy moved from one level to another."""

    old: ThermalLevel
    new: ThermalLevel
    temp_c: float
    at: float
    reason: str
    """One sentence: the temperature, the threshold crossed and what that does."""
    restriction: Restriction | None


class ThermalPolicy:
    """Sans-I/O thermal state machine: ``update(temp_c, now)`` per reading."""

    def __init__(self, cfg: ThermalConfig | None = None) -> None:
        self.cfg = cfg or ThermalConfig()
        self.level = ThermalLevel.NORMAL
        self.fan_duty = 0.0
        self.last_temp_c: float | None = None
        self._cool_since: float | None = None

    def _target_up(self, temp: float) -> ThermalLevel:
        return max(lv for lv in ThermalLevel if temp >= self.cfg.threshold(lv))

    def _target_down(self, temp: float) -> ThermalLevel:
        h = self.cfg.hysteresis_c
        return max(lv for lv in ThermalLevel if temp >= self.cfg.threshold(lv) - h)

    def update(self, temp_c: float | None, now: float) -> LevelChange | None:
        """Feed one reading; returns the level change it causes, if any.

        A missing reading (``None``) keeps the current level and fan speed.
        """
        if temp_c is None:
            return None
        self.last_temp_c = temp_c
        self.fan_duty = self._fan(temp_c)
        up = self._target_up(temp_c)
        if up > self.level:
            self._cool_since = None
            t = self.cfg.threshold(up)
            return self._move(up, temp_c, now, f"reached the {up.label} threshold {t:g} C")
        down = self._target_down(temp_c)
        if down >= self.level:
            self._cool_since = None
            return None
        if self._cool_since is None:
            self._cool_since = now
        if now - self._cool_since < self.cfg.cool_down_s:
            return None
        self._cool_since = None
        limit = self.cfg.threshold(self.level) - self.cfg.hysteresis_c
        return self._move(
            down,
            temp_c,
            now,
            f"stayed below {limit:g} C for {self.cfg.cool_down_s:g} s",
        )

    def _move(self, new: ThermalLevel, temp: float, now: float, why: str) -> LevelChange:
        old, self.level = self.level, new
        if new >= ThermalLevel.WARM:
            self.fan_duty = 100.0
        reason = (
            f"SoC at {temp:.1f} C {why}: thermal level {old.label} -> {new.label}, {_ACTIONS[new]}"
        )
        return LevelChange(old, new, temp, now, reason, restriction_for(new, self.cfg))

    def _fan(self, temp: float) -> float:
        c = self.cfg
        if temp >= c.warm_c or self.level >= ThermalLevel.WARM:
            return 100.0
        if temp >= c.fan_start_c:
            span = c.warm_c - c.fan_start_c
            return round(
                c.fan_min_duty + (100.0 - c.fan_min_duty) * (temp - c.fan_start_c) / span, 1
            )
        if self.fan_duty > 0 and temp >= c.fan_start_c - c.hysteresis_c:
            return c.fan_min_duty
        return 0.0
