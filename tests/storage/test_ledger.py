"""Vouchers and the earnings ledger: signatures, ordering, daily totals, rebuild from logs."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import state
from node.identity import Identity
from node.storage_agent.errors import ProofError, ProtocolError
from node.storage_agent.ledger import Ledger
from node.storage_agent.vouchers import Voucher

PAYER = Identity.from_seed(b"p" * 32)
PAYER2 = Identity.from_seed(b"q" * 32)
ME = Identity.from_seed(b"m" * 32)
DAY1 = 1_780_000_000  # 2026-05-28
DAY2 = DAY1 + 86400


def voucher(
    seq: int, issued: int, storage: int, egress: int = 0, payer: Identity = PAYER
) -> Voucher:
    return Voucher(payer.public_key, ME.node_id, seq, issued, storage, egress, 0).signed(payer)


def make(tmp_path: Path) -> Ledger:
    (tmp_path / "vouchers").mkdir(exist_ok=True)
    return Ledger(state.open_state(tmp_path / "state.db"), ME.node_id, tmp_path / "vouchers")


def test_newest_voucher_counts_and_days_add_up(tmp_path: Path) -> None:
    led = make(tmp_path)
    assert led.accept(voucher(1, DAY1, 1_000_000), DAY1) == 1_000_000
    assert led.accept(voucher(2, DAY1 + 60, 1_500_000, 250_000), DAY1) == 750_000
    assert led.accept(voucher(3, DAY2, 2_000_000, 250_000), DAY2) == 500_000
    assert led.accept(voucher(1, DAY2, 3_000_000, payer=PAYER2), DAY2) == 3_000_000
    e = led.earnings(DAY2)
    assert e["all_time"] == pytest.approx(5.25)
    assert e["today"] == pytest.approx(3.5)
    assert e["channels"] == 2
    assert e["by_day"][0] == {"day": "2026-05-28", "storage": 1.5, "egress": 0.25, "relay": 0.0}
    doc = json.loads(led.export("json"))
    assert sorted(v["total_bct"] for v in doc["vouchers"]) == [2.25, 3.0]
    assert led.export("csv").decode().splitlines()[0].startswith("channel,payer,payee,seq")


def test_bad_signature_stale_and_decreasing_vouchers_are_refused(tmp_path: Path) -> None:
    led = make(tmp_path)
    led.accept(voucher(5, DAY1, 100), DAY1)
    forged = replace(voucher(6, DAY1, 10**12), storage=10**13)
    with pytest.raises(ProofError, match="bad payer signature"):
        led.accept(forged, DAY1)
    with pytest.raises(ProofError, match="not newer"):
        led.accept(voucher(5, DAY1, 200), DAY1)
    with pytest.raises(ProofError, match="went down"):
        led.accept(voucher(7, DAY1, 50), DAY1)
    other_payee = Voucher(PAYER.public_key, PAYER.node_id, 9, DAY1, 1, 0, 0).signed(PAYER)
    with pytest.raises(ProofError, match="another node"):
        led.accept(other_payee, DAY1)
    assert led.earnings(DAY1)["all_time"] == pytest.approx(0.0001)


def test_history_survives_a_lost_state_db(tmp_path: Path) -> None:
    led = make(tmp_path)
    led.accept(voucher(1, DAY1, 1_000_000), DAY1)
    led.accept(voucher(2, DAY2, 3_000_000, 10), DAY2)
    before = led.earnings(DAY2)
    led.db.conn.close()
    (tmp_path / "state.db").unlink()
    fresh = make(tmp_path)
    assert fresh.empty()
    assert fresh.rebuild() == 2
    assert fresh.earnings(DAY2) == before


def test_voucher_in_future_refused(tmp_path: Path) -> None:
    led = make(tmp_path)
    now = time.time()
    with pytest.raises(ProofError, match="future"):
        led.accept(voucher(1, int(now) + 3600, 1), now)


@given(st.binary(max_size=300))
def test_voucher_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Voucher.decode(data)
