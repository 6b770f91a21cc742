"""The thermal policy driven by scripted temperature series on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from node.errors import ConfigError
from node.hwmon.thermal import ThermalConfig, ThermalLevel, ThermalPolicy, restriction_for
from node.limits import Restriction, WorkLimits

CFG = ThermalConfig(
    warm_c=65, hot_c=75, critical_c=85, hysteresis_c=5, cool_down_s=30,
    hot_bandwidth_cap_bps=2_000_000, fan_start_c=50, fan_min_duty=30,
)  # fmt: skip
N, W, H, C = ThermalLevel.NORMAL, ThermalLevel.WARM, ThermalLevel.HOT, ThermalLevel.CRITICAL


def run(series: Sequence[tuple[float, float | None]]) -> list[tuple[float, ThermalLevel]]:
    """Feed (time, temp) pairs; return (time, new level) for each change."""
    policy = ThermalPolicy(CFG)
    return [(t, c.new) for t, temp in series if (c := policy.update(temp, t)) is not None]


def test_rising_levels_are_entered_at_once() -> None:
    series = [(0, 40.0), (5, 64.9), (10, 65.0), (15, 74.0), (20, 75.0), (25, 85.5)]
    assert run(series) == [(10, W), (20, H), (25, C)]


def test_jump_straight_to_critical() -> None:
    assert run([(0, 40.0), (5, 90.0)]) == [(5, C)]


def test_hovering_at_a_threshold_does_not_flap() -> None:
    # Oscillating between 73 and 76 around hot (75): entered once, never left (73 > 75 - 5).
    series = [(t, 76.0 if t % 10 == 0 else 73.0) for t in range(0, 300, 5)]
    assert run(series) == [(0, H)]


def test_leaving_needs_hysteresis_and_cool_down() -> None:
    series = [
        (0, 80.0),  # hot
        (5, 71.0),  # below 75 but not below 70: stays hot
        (10, 69.0),  # below 70: cool-down starts
        (35, 69.0),  # 25 s: not yet
        (40, 69.0),  # 30 s: leaves hot, straight to warm (69 >= 65 - 5)
        (45, 59.0),  # below 60: cool-down for warm starts
        (60, 66.0),  # warm again before 30 s: cool-down reset (and no change: already warm)
        (65, 59.0),
        (94, 59.0),
        (95, 59.0),  # 30 s after 65: normal
    ]
    assert run(series) == [(0, H), (40, W), (95, N)]


def test_cooling_fast_drops_several_levels_at_once() -> None:
    assert run([(0, 90.0), (10, 40.0), (40, 40.0)]) == [(0, C), (40, N)]


def test_missing_readings_keep_the_level() -> None:
    assert run([(0, 80.0), (10, None), (100, None), (200, 80.0)]) == [(0, H)]


def test_each_level_cuts_more_work() -> None:
    assert restriction_for(N, CFG) is None
    assert restriction_for(W, CFG) == Restriction(pause_background=True)
    hot = restriction_for(H, CFG)
    assert hot == Restriction(
        pause_background=True, bandwidth_cap_bps=2_000_000, refuse_uploads=True
    )
    assert hot is not None and not hot.refuse_audits  # audits answered until critical
    crit = restriction_for(C, CFG)
    assert crit is not None and crit.refuse_audits and crit.refuse_uploads


def test_changes_carry_reason_and_restriction_into_limits() -> None:
    policy, limits = ThermalPolicy(CFG), WorkLimits()
    change = policy.update(77.2, 0.0)
    assert change is not None
    assert change.reason == (
        "SoC at 77.2 C reached the hot threshold 75 C: thermal level normal -> hot, "
        "background scans paused, bandwidth capped, new uploads refused"
    )
    limits.set("thermal", change.restriction)
    assert limits.bandwidth_cap_bps == 2_000_000 and limits.why("refuse_uploads") == ["thermal"]
    assert not limits.refuse_audits
    policy.update(60.0, 1.0)
    down = policy.update(55.0, 31.0)
    assert down is not None and down.new == N
    assert "stayed below 70 C for 30 s" in down.reason
    limits.set("thermal", down.restriction)
    assert limits.to_json()["reasons"] == []


def test_fan_curve_with_hysteresis() -> None:
    policy = ThermalPolicy(CFG)
    duties = []
    for t, temp in enumerate([40.0, 50.0, 57.5, 64.0, 48.0, 46.0, 44.9, 66.0, 62.0]):
        policy.update(temp, float(t))
        duties.append(policy.fan_duty)
    # off, start at min duty, linear, near full, holds min inside hysteresis, off below 45,
    # full when warm, full while still warm (hysteresis on the level)
    assert duties == [0.0, 30.0, 65.0, 95.3, 30.0, 30.0, 0.0, 100.0, 100.0]


def test_thresholds_must_rise() -> None:
    with pytest.raises(ConfigError, match="thresholds must rise"):
        ThermalConfig(warm_c=80, hot_c=75, critical_c=85)
    with pytest.raises(ConfigError, match="fan_start_c"):
        ThermalConfig(fan_start_c=70)
