"""The data disk misbehaving under a real agent: damaged chunk, full disk, vanished disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.conftest import fast_config
from tests.storage.test_agent_storage import cli, get, put, status, wait_for
from tests.support import require_binary, require_root, start_agent


def test_flipped_byte_is_found_by_scrub_and_repaired(data_dir: Path, tmp_path: Path) -> None:
    # Audits rarely, so that the scrub (not an audit) is what finds the damage.
    fast_config(data_dir, "scrub_days = 0.0001\n")
    cfg = data_dir / "config.toml"
    cfg.write_text(cfg.read_text().replace("audit_interval = 1.0", "audit_interval = 3600.0"))
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(1024 * 1024))
    agent = start_agent(data_dir)
    try:
        wait_for("peers", lambda: status(agent)["accepting_peers"] >= 1)
        file_id = put(agent, src)
        chunks = [p for p in (data_dir / "chunks").glob("??/??/*") if p.suffix != ".tree"]
        files = sorted(chunks, key=lambda p: p.stat().st_size)
        victim = files[-1]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        victim.write_bytes(bytes(raw))
        wait_for("scrub to find the damage", lambda: status(agent)["damaged"] >= 1)
        wait_for("repair", lambda: status(agent)["repairs"] >= 1)
        assert hashlib.blake2b(victim.read_bytes(), digest_size=32).hexdigest() == victim.name
        assert (data_dir / "damaged" / victim.name).exists()
        res = get(agent, file_id, tmp_path / "out.bin")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    finally:
        agent.stop()


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a small data disk")
    require_binary("mount", "mount")
    point = tmp_path / "disk"
    point.mkdir()
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_disk_refuses_uploads_clearly_and_still_serves(
    data_dir: Path, tmp_path: Path, mount_point: Path
) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    fast_config(data_dir, f'path = "{mount_point}"\n')
    first, big = tmp_path / "first.bin", tmp_path / "big.bin"
    first.write_bytes(os.urandom(512 * 1024))
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    agent = start_agent(data_dir)
    try:
        wait_for("peers", lambda: status(agent)["accepting_peers"] >= 1)
        file_id = put(agent, first)
        res = cli("put", str(big), "--data-dir", str(data_dir))
        assert res.returncode == 1
        # Refused by the store's own free-space check or by the disk monitor's work limit.
        assert "no room" in res.stderr or "data_disk" in res.stderr, res.stderr
        res = get(agent, file_id, tmp_path / "out.bin")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out.bin").read_bytes() == first.read_bytes()
        assert status(agent)["audit_failures"] == 0
    finally:
        agent.stop()


def test_vanished_disk_degrades_and_recovers(
    data_dir: Path, tmp_path: Path, mount_point: Path
) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    subprocess.run(["mount", "--bind", str(backing), str(mount_point)], check=True)
    fast_config(data_dir, f'path = "{mount_point}"\n')
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(512 * 1024))
    agent = start_agent(data_dir)
    try:
        wait_for("peers", lambda: status(agent)["accepting_peers"] >= 1)
        file_id = put(agent, src)
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
        wait_for("degraded", lambda: bool(status(agent)["degraded"]))
        assert "data disk missing" in status(agent)["degraded"]
        res = cli("put", str(src), "--data-dir", str(data_dir))
        assert res.returncode == 1 and "degraded" in res.stderr, res.stderr
        audits = status(agent)["audits"]
        wait_for("audits while degraded", lambda: status(agent)["audits"] >= audits + 3)
        assert status(agent)["audit_failures"] == 0
        assert not (mount_point / "chunks").exists()
        subprocess.run(["mount", "--bind", str(backing), str(mount_point)], check=True)
        wait_for("recovery", lambda: status(agent)["degraded"] is None)
        res = get(agent, file_id, tmp_path / "out.bin")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        # Uploads are taken again (the node's own audit scores, hurt by the outage, are the
        # placer's business: it does not place new shares on a suspended node).
        wait_for("accepting again", lambda: status(agent)["uploads_refused"] is None)
    finally:
        agent.stop()
