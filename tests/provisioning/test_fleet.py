"""enroll / status / upgrade against real sshd boxes with real agents behind them."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from node import identity
from provisioning import fleet
from provisioning.cli import main
from provisioning.errors import RemoteError
from provisioning.inventory import Inventory
from provisioning.remote import SshOptions, parse_host
from tests.provisioning.boxes import TOKEN, FakeBox, free_port
from tests.provisioning.wheels import make_wheel


def _opts(operator_key: Path) -> SshOptions:
    return SshOptions(user="root", identity_file=operator_key, connect_timeout=10)


def _node_id(box: FakeBox) -> str:
    return identity.load(box.data_dir / identity.KEY_FILE, check_mode=False).node_id_text


def _specs(boxes: list[FakeBox]) -> list:  # type: ignore[type-arg]
    return [parse_host(b.spec, "pi") for b in boxes]


def test_enroll_status_and_failures_stay_per_host(
    tmp_path: Path, boxes: list[FakeBox], operator_key: Path
) -> None:
    inv = Inventory(tmp_path / "inv.db")
    dead = parse_host(f"root@127.0.0.1:{free_port()}", "pi")
    results = fleet.enroll(inv, [*_specs(boxes), dead], TOKEN, _opts(operator_key))
    assert [r.ok for r in results] == [True, True, True, False]
    assert "cannot connect" in results[3].message
    for box in boxes:
        rec = inv.get(box.id)
        assert rec is not None and rec.node_id == _node_id(box)
        assert rec.fingerprint and rec.fingerprint.startswith("SHA256:")
        assert rec.version == "0.1.0"
    # Idempotent: enrolling again keeps the pinned keys and the node ids.
    before = {b.id: inv.get(b.id) for b in boxes}
    again = fleet.enroll(inv, _specs(boxes), TOKEN, _opts(operator_key))
    assert all(r.ok and "already enrolled" in r.message for r in again)
    for b in boxes:
        now = inv.get(b.id)
        assert now is not None and now.host_key == before[b.id].host_key  # type: ignore[union-attr]

    wrong = fleet.enroll(
        Inventory(tmp_path / "other.db"),
        _specs(boxes)[:1],
        "wrong-token-0123456789",
        _opts(operator_key),
    )
    assert not wrong[0].ok and "enrollment token does not match" in wrong[0].message
    assert Inventory(tmp_path / "other.db").get(boxes[0].id) is None  # nothing pinned

    rows = fleet.status(inv, _opts(operator_key))
    assert [r.data["node_id"] for r in rows] == [
        _node_id(b) for b in sorted(boxes, key=lambda b: b.id)
    ]
    assert all(r.ok and r.data["agent"] == "running" and r.data["version"] == "0.1.0" for r in rows)
    assert all(r.data["disk_total_gb"] for r in rows)

    # One agent down: that box says so, the others are unaffected.
    boxes[2].stop_agent()
    try:
        rows = {r.host: r for r in fleet.status(inv, _opts(operator_key))}
        assert rows[boxes[2].id].data["agent"] == "not running"
        assert "agent not running" in (rows[boxes[2].id].data["last_error"] or "")
        assert all(rows[b.id].ok for b in boxes[:2])
        assert inv.get(boxes[2].id).last_error  # type: ignore[union-attr]
    finally:
        boxes[2].box("activate", "0.1.0")
        boxes[2].box("health", "0.1.0", "30")


def test_cli_enroll_and_status_json(
    tmp_path: Path, boxes: list[FakeBox], operator_key: Path
) -> None:
    db = tmp_path / "inv.db"
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    common = ["--inventory", str(db), "-i", str(operator_key), "--user", "root"]
    res = CliRunner().invoke(
        main,
        ["enroll", *[f"127.0.0.1:{b.port}" for b in boxes], "--token-file", str(token), *common],
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("ok    ") == 3
    res = CliRunner().invoke(main, ["status", "--json", *common])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert {d["node_id"] for d in doc} == {_node_id(b) for b in boxes}
    res = CliRunner().invoke(main, ["status", *common])
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("HOST")
    assert TOKEN not in res.output


def test_changed_host_key_is_refused(
    tmp_path: Path, boxes: list[FakeBox], operator_key: Path
) -> None:
    inv = Inventory(tmp_path / "inv.db")
    assert all(r.ok for r in fleet.enroll(inv, _specs(boxes), TOKEN, _opts(operator_key)))
    victim = boxes[0]
    pinned = inv.get(victim.id).host_key  # type: ignore[union-attr]
    victim.rekey()
    rows = {r.host: r for r in fleet.status(inv, _opts(operator_key))}
    assert not rows[victim.id].ok
    assert "HOST KEY CHANGED" in rows[victim.id].message
    assert all(rows[b.id].ok for b in boxes[1:])
    # enroll does not re-pin silently either
    res = fleet.enroll(inv, _specs([victim]), TOKEN, _opts(operator_key))
    assert not res[0].ok and "HOST KEY CHANGED" in res[0].message
    assert inv.get(victim.id).host_key == pinned  # type: ignore[union-attr]
    # The operator's explicit way out: forget, then enroll again (token checked again).
    res_cli = CliRunner().invoke(
        main, ["forget", victim.spec, "--inventory", str(tmp_path / "inv.db")]
    )
    assert res_cli.exit_code == 0, res_cli.output
    again = CliRunner().invoke(
        main, ["forget", victim.spec, "--inventory", str(tmp_path / "inv.db")]
    )
    assert again.exit_code == 0 and "nothing to forget" in again.output
    res = fleet.enroll(inv, _specs([victim]), TOKEN, _opts(operator_key))
    assert res[0].ok and inv.get(victim.id).host_key != pinned  # type: ignore[union-attr]


def test_reinitialised_box_is_reported(
    tmp_path: Path, boxes: list[FakeBox], operator_key: Path
) -> None:
    inv = Inventory(tmp_path / "inv.db")
    assert all(r.ok for r in fleet.enroll(inv, _specs(boxes), TOKEN, _opts(operator_key)))
    box = boxes[1]
    old = _node_id(box)
    box.stop_agent()
    try:
        rows = {r.host: r for r in fleet.status(inv, _opts(operator_key))}
        assert rows[box.id].data["node_id"] == old  # cached id, agent down
        (box.data_dir / identity.KEY_FILE).unlink()
        subprocess.run(
            [str(box.prefix / "bin" / "bitchat-node"), "init"],
            env=box.env,
            check=True,
            capture_output=True,
        )
        new = _node_id(box)
        rows = {r.host: r for r in fleet.status(inv, _opts(operator_key))}
        assert not rows[box.id].ok
        assert f"node id is now {new}, enrolled as {old}" in rows[box.id].message
    finally:
        box.box("activate", "0.1.0")
        box.box("health", "0.1.0", "30")


def test_upgrade_rejects_a_non_wheel(tmp_path: Path) -> None:
    junk = tmp_path / "agent.tar.gz"
    junk.write_bytes(b"x")
    with pytest.raises(Exception, match="not a bitchat_node"):
        fleet.upgrade(Inventory(tmp_path / "i.db"), junk, SshOptions())


@given(st.text(max_size=400))
def test_facts_parser_rejects_garbage_cleanly(text: str) -> None:
    with contextlib.suppress(RemoteError):
        fleet.parse_facts(text, "box")


@given(
    st.dictionaries(
        st.sampled_from(
            ["node_id", "version", "previous", "token_sha256", "temperature_c", "api", "disk", "x"]
        ),
        st.one_of(
            st.none(),
            st.text(max_size=60),
            st.integers(),
            st.booleans(),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        ),
        max_size=8,
    )
)
def test_facts_parser_on_structured_input(doc: dict[str, object]) -> None:
    try:
        facts = fleet.parse_facts(json.dumps(doc), "box")
    except RemoteError:
        return
    fleet._summary(facts)


@given(st.text(max_size=80))
def test_host_parser(text: str) -> None:
    try:
        spec = parse_host(text, "pi")
    except RemoteError:
        return
    assert 0 < spec.port < 65536 and spec.host and spec.user


def test_box_helper_refuses_unknown_commands(boxes: list[FakeBox]) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        boxes[0].box("reformat-everything")


def test_rolling_upgrade_rolls_back_a_failing_box(
    tmp_path: Path, boxes: list[FakeBox], operator_key: Path
) -> None:
    """Last in this module: it leaves the boxes on 0.2.0."""
    inv = Inventory(tmp_path / "inv.db")
    assert all(r.ok for r in fleet.enroll(inv, _specs(boxes), TOKEN, _opts(operator_key)))
    first, bad, last = sorted(boxes, key=lambda b: b.id)
    wheel = make_wheel("0.2.0", tmp_path / "dist")
    (bad.root / "broken_version").write_text("0.2.0")
    try:
        report = fleet.upgrade(
            inv, wheel, _opts(operator_key), max_unavailable=1, max_failed=0, health_timeout=8
        )
    finally:
        (bad.root / "broken_version").unlink()
    res = {r.host: r for r in report.results}
    assert report.stopped
    assert res[first.id].ok and "(was 0.1.0)" in res[first.id].message
    assert not res[bad.id].ok and "rolled back to 0.1.0" in res[bad.id].message
    assert "health check failed" in res[bad.id].message
    assert not res[last.id].ok and "not attempted" in res[last.id].message
    assert bad.box("health", "0.1.0", "10").returncode == 0  # the old release serves again
    assert last.box("health", "0.1.0", "10").returncode == 0  # untouched
    assert inv.get(bad.id).version == "0.1.0"  # type: ignore[union-attr]

    # Fixed: the same command finishes the job; the box already upgraded is only checked.
    report = fleet.upgrade(inv, wheel, _opts(operator_key), max_unavailable=3, health_timeout=30)
    res = {r.host: r for r in report.results}
    assert all(r.ok for r in report.results), [r.message for r in report.results]
    assert "already" in res[first.id].message and "(was 0.1.0)" in res[bad.id].message
    rows = fleet.status(inv, _opts(operator_key))
    assert {r.data["version"] for r in rows} == {"0.2.0"}
    assert {inv.get(b.id).version for b in boxes} == {"0.2.0"}  # type: ignore[union-attr]


def test_status_row_reads_the_dashboards_earnings_and_temperature() -> None:
    row = fleet._summary(
        {
            "api": {
                "/api/status": {"node_id": "n", "version": "0.1.0"},
                "/api/earnings": {"available": True, "all_time": 12.5, "today": 1.0},
                "/api/hardware": {"available": True, "cpu_temp_c": 61.2},
            }
        }
    )
    assert row["earnings"] == 12.5
    assert row["temperature_c"] == 61.2
