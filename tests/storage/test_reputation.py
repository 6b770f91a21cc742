from __future__ import annotations

import random

from node.storage_agent.audit import Outcome, detection_probability
from node.storage_agent.reputation import AUDIT_DQ, SUSPEND, Reputation


def test_honest_node_stays_clean() -> None:
    rep = Reputation()
    for i in range(500):
        r = rep.record(b"n", Outcome.SUCCESS, i * 60.0)
    assert r.audit_score == 1.0 and not r.suspended and not r.disqualified


def test_one_bad_audit_is_forgiven_a_lossy_node_is_disqualified() -> None:
    rep = Reputation()
    for i in range(200):
        rep.record(b"ok", Outcome.SUCCESS, i)
    r = rep.record(b"ok", Outcome.FAIL, 200)
    assert r.audit_score > AUDIT_DQ and not r.disqualified
    rng = random.Random(1)
    p_fail = detection_probability(0.10, 16)
    for i in range(200):
        rep.record(b"lossy", Outcome.SUCCESS, i)
    for i in range(200, 260):
        r = rep.record(b"lossy", Outcome.FAIL if rng.random() < p_fail else Outcome.SUCCESS, i)
    assert r.disqualified


def test_offline_node_is_suspended_not_disqualified() -> None:
    rep = Reputation(online_window=100.0)
    for i in range(50):
        rep.record(b"n", Outcome.SUCCESS, float(i))
    for i in range(50, 200):
        r = rep.record(b"n", Outcome.OFFLINE, float(i))
    assert r.suspended and not r.disqualified and r.audit_score == 1.0
    assert r.online_score() < SUSPEND
    for i in range(200, 400):
        r = rep.record(b"n", Outcome.SUCCESS, float(i))
    assert not r.suspended
