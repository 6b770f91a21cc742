"""The emulated Raspberry Pi box: an SD image built by `bitchat-fleet image build` from an
arm64 Debian base laid out like Raspberry Pi OS, booted under QEMU, enrolled, used as a storage
node in a small devnet on the host, and broken on purpose. Enabled by BITCHAT_HIL_EMUBOX=1, and
always under CI=true.

One box boots once for the whole module (boots are what cost time under emulation); the tests
run in order on it: first boot and enrollment, a file stored through it and read back, a
network cut, then a power cut during uploads followed by a boot with the clock far off.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.emubox import EmuBoxError, EmulatedBox, NtpServer, ensure_base, flow
from node.cli import fetch_json
from node.hwmon.clock import RELEASE_FLOOR
from node.storage_agent.devnet import DEVNET_STORAGE, Devnet
from tests.support import IN_CI, require_binary, require_root

# Building the image, the boots and the agent's first start take many minutes under
# software emulation; the suite's 300 s per-test default would cut them off.
pytestmark = [pytest.mark.emubox, pytest.mark.timeout(3000)]
BOOT_TIMEOUT = float(os.environ.get("BITCHAT_HIL_BOOT_TIMEOUT", "1200"))
# timesyncd asks the host only (nothing else answers NTP here), and forgets the time it saved.
HOST_NTP_ONLY = (
    "mkdir -p /etc/systemd/timesyncd.conf.d && "
    "printf '[Time]\\nNTP=10.0.2.2\\nFallbackNTP=\\n' > /etc/systemd/timesyncd.conf.d/emubox.conf"
    " && systemctl stop systemd-timesyncd && rm -f /var/lib/systemd/timesync/clock && sync"
)
# The owner moves the store to a USB disk: mounted by label (nofail, as for a disk that may be
# absent), the store's files copied over, [storage] path pointed at it. The mount sits inside
# the data dir, which the agent's unit may write (ProtectSystem=strict).
DISK = f"{flow.DATA}/disk"
MOVE_STORE_TO_DISK = (
    "for i in $(seq 120); do [ -e /dev/disk/by-label/bitchat-data ] && break; sleep 1; done; "
    f"mkdir -p {DISK} && "
    f"echo 'LABEL=bitchat-data {DISK} ext4 defaults,nofail,noatime 0 2' >> /etc/fstab && "
    f"systemctl daemon-reload && mount {DISK} && systemctl stop bitchat-node && "
    f"mkdir -p {DISK}/store && for d in storage-id chunks contracts vouchers files; do "
    f"[ ! -e {flow.DATA}/$d ] || cp -a {flow.DATA}/$d {DISK}/store/; done && "
    f"chown -R bitchat:bitchat {DISK} && "
    f"sed -i 's|^\\[storage\\]$|[storage]\\npath = \"{DISK}/store\"|' {flow.DATA}/config.toml && "
    "systemctl start bitchat-node"
)
# Plugged back in: the owner mounts it again (the stale mount of the pulled disk goes first).
REMOUNT = (
    f"umount -l {DISK} 2>/dev/null; for i in $(seq 120); do mount {DISK} && break; sleep 1; done"
)
FILE_SIZE = 192 * 1024 + 17  # one stripe: quick to place under emulation


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("BITCHAT_HIL_EMUBOX") != "1" and not IN_CI:
        pytest.skip("the emulated box takes minutes: set BITCHAT_HIL_EMUBOX=1 to run it")
    require_root("building the emulated box base (debootstrap) and serving NTP on port 123")
    for binary, package in (
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("qemu-aarch64-static", "qemu-user-static"),
        ("debootstrap", "debootstrap"),
        ("mcopy", "mtools"),
        ("mkfs.vfat", "dosfstools"),
        ("mke2fs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("ssh-keygen", "openssh-client"),
    ):
        require_binary(binary, package)
    return tmp_path_factory.mktemp("emubox")


@pytest.fixture(scope="module")
def key(workdir: Path) -> Path:
    return flow.operator_key(workdir)


@pytest.fixture(scope="module")
def devnet(workdir: Path) -> Iterator[Devnet]:
    """Three agents on the host's loopback; the box reaches them at 10.0.2.2."""
    net = Devnet(workdir / "devnet", 3)
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def recipe(workdir: Path, key: Path, devnet: Devnet) -> Path:
    # User-mode networking maps 10.0.2.2 to the host's loopback: the box joins the devnet
    # through it, as a box behind a home router joins through its bootstrap peers.
    peers = ", ".join(f'"10.0.2.2:{node.port}"' for node in devnet.nodes)
    return flow.write_recipe(workdir, key, f"[network]\nbootstrap = [{peers}]\n{DEVNET_STORAGE}")


@pytest.fixture(scope="module")
def box(workdir: Path, recipe: Path) -> Iterator[EmulatedBox]:
    image = flow.build_image(workdir, recipe)
    with EmulatedBox(image, ensure_base(), workdir / "qemu") as emu:
        emu.wait_for_ssh(BOOT_TIMEOUT)
        yield emu


@pytest.fixture(scope="module")
def token(box: EmulatedBox, key: Path) -> str:
    flow.wait_for_agent(box, BOOT_TIMEOUT)
    return flow.ssh(box, key, f"sudo cat {flow.DATA}/admin.token").strip()


def storage(box: EmulatedBox) -> dict[str, object]:
    doc: dict[str, object] = flow.web_json(box, "/api/status")["services"]["storage"]
    return doc


def put(box: EmulatedBox, token: str, path: Path) -> str:
    res = flow.cli("put", str(path), "--api", flow.web(box), "--token", token)
    if res.returncode != 0:
        raise EmuBoxError(f"put through the box failed: {res.stderr.strip()[-500:]}")
    return res.stdout.strip()


def read_back(box: EmulatedBox, token: str, file_id: str, out: Path) -> bytes:
    res = flow.cli("get", file_id, "-o", str(out), "--api", flow.web(box), "--token", token)
    if res.returncode != 0:
        raise EmuBoxError(f"get through the box failed: {res.stderr.strip()[-500:]}")
    return out.read_bytes()


def random_file(path: Path) -> Path:
    path.write_bytes(os.urandom(FILE_SIZE))
    return path


def test_first_boot_enroll_dashboard_doctor(
    box: EmulatedBox, key: Path, recipe: Path, workdir: Path
) -> None:
    status = flow.wait_for_agent(box, BOOT_TIMEOUT)
    assert len(status["node_id"]) == 52
    # The OS side ran once from the boot partition and removed itself, as on a Pi.
    assert "systemd.run" not in box.cmdline()
    assert box.boots >= 2
    # The image holds the release, installed by the image build: first boot ran no pip. The
    # wheelhouse (wheels only) is there for upgrades.
    installed = flow.ssh(box, key, "ls /opt/bitchat-node/wheelhouse")
    assert "zfec-" in installed and ".tar.gz" not in installed
    journal = flow.ssh(box, key, "sudo journalctl -u bitchat-node-firstboot -o cat")
    assert "firstboot step=install how=in_image" in journal, journal
    names = flow.ssh(box, key, "hostname; cat /etc/hostname").split()
    assert names[0] == names[1] and re.fullmatch(r"bitchat-[0-9a-f]{6}", names[0]), names
    out = flow.enroll(box, key, recipe, workdir / "inventory.db")
    assert status["node_id"] in out
    doctor = flow.ssh(box, key, f"sudo bitchat-node doctor --json --data-dir {flow.DATA} || true")
    checks = json.loads(doctor)
    assert checks, "doctor printed no checks"
    hardware = flow.web_json(box, "/api/hardware")
    assert "thermal_level" in hardware or hardware.get("available") is False
    assert hardware["clock"]["state"] == "ok"  # unsynchronised (no NTP reachable) but sane


def test_file_stored_through_the_box_in_a_devnet_reads_back(
    box: EmulatedBox, token: str, devnet: Devnet, tmp_path: Path
) -> None:
    flow.wait_until(
        "the box to find the devnet's storage peers",
        lambda: int(str(storage(box)["accepting_peers"])) >= 2,
        600,
        box,
    )
    src = random_file(tmp_path / "in.bin")
    file_id = put(box, token, src)
    assert read_back(box, token, file_id, tmp_path / "out.bin") == src.read_bytes()
    held = [
        fetch_json(node.web.rstrip("/") + "/api/status")["services"]["storage"]["chunks"]
        for node in devnet.nodes
    ]
    assert sum(held) > 0, "no devnet node holds a share of the file stored through the box"


def test_network_cut_and_back(box: EmulatedBox, token: str, tmp_path: Path) -> None:
    box.set_network(False)
    time.sleep(75)  # past the transport's 60 s idle timeout: the peers drop the box
    with pytest.raises(OSError):
        flow.web_json(box, "/api/status")
    box.set_network(True)
    src = random_file(tmp_path / "after-cut.bin")
    file_id = flow.wait_until(
        "a store through the box after the cut", lambda: put(box, token, src), 600, box
    )
    assert read_back(box, token, file_id, tmp_path / "out.bin") == src.read_bytes()


def limit_reasons(box: EmulatedBox) -> list[str]:
    reasons: list[str] = flow.web_json(box, "/api/status")["limits"]["reasons"]
    return reasons


def test_data_disk_pulled_and_plugged_back(
    box: EmulatedBox, key: Path, token: str, workdir: Path, tmp_path: Path
) -> None:
    disk = workdir / "data-disk.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "bitchat-data", str(disk), "256M"], check=True
    )
    box.attach_data_disk(disk)
    flow.ssh(box, key, "sudo sh -c " + shlex.quote(MOVE_STORE_TO_DISK))
    flow.wait_until(
        "the agent on its data disk",
        lambda: flow.web_json(box, "/api/hardware")["disks"][0]["mountpoint"] == DISK,
        BOOT_TIMEOUT,
        box,
    )
    src = random_file(tmp_path / "on-disk.bin")
    file_id = flow.wait_until("a store with the data disk", lambda: put(box, token, src), 600, box)

    box.detach_data_disk()
    flow.wait_until(
        "the box to stop work for the pulled disk",
        lambda: "data_disk" in limit_reasons(box),
        300,
        box,
    )
    hardware = flow.web_json(box, "/api/hardware")
    assert hardware["disks"][0]["state"] == "missing"
    (finding,) = [f for f in hardware["findings"] if f["check"] == "data-disk"]
    assert finding["level"] == "fail" and "reconnect" in finding["action"]

    box.attach_data_disk(disk)
    flow.ssh(box, key, "sudo sh -c " + shlex.quote(REMOUNT))
    flow.wait_until(
        "the box to resume",
        lambda: "data_disk" not in limit_reasons(box) and not storage(box)["degraded"],
        300,
        box,
    )
    assert read_back(box, token, file_id, tmp_path / "out.bin") == src.read_bytes()


def test_power_cut_during_uploads_then_boot_with_the_clock_far_off(
    box: EmulatedBox, key: Path, token: str, tmp_path: Path
) -> None:
    before = flow.wait_for_agent(box, BOOT_TIMEOUT)
    # timesyncd asks only the host, and the time it saved is gone, as on a fresh card: the next
    # boot starts at systemd's build time, months behind.
    flow.ssh(box, key, "sudo sh -c " + shlex.quote(HOST_NTP_ONLY))

    acked: dict[str, bytes] = {}
    failed: list[Exception] = []

    def uploads() -> None:
        for i in range(100):
            src = random_file(tmp_path / f"up-{i}.bin")
            try:
                acked[put(box, token, src)] = src.read_bytes()
            except EmuBoxError as exc:
                failed.append(exc)  # the one in flight when the power went
                return

    loader = threading.Thread(target=uploads, daemon=True)
    loader.start()
    flow.wait_until("two acknowledged uploads", lambda: len(acked) >= 2, 900, box)
    time.sleep(3)  # into the next upload
    box.power_cut()
    loader.join(120)
    assert failed, "the upload in flight at the power cut should have failed"

    box.clock_offset = "2001-01-01"
    box.start()
    box.wait_for_ssh(BOOT_TIMEOUT)
    status = flow.wait_for_agent(box, BOOT_TIMEOUT)
    assert status["node_id"] == before["node_id"]
    assert float(flow.ssh(box, key, "date +%s")) < RELEASE_FLOOR
    # The agent refuses to mine and says why.
    flow.wait_until("the clock limit", lambda: "clock" in limit_reasons(box), 120, box)
    status = flow.web_json(box, "/api/status")
    assert status["limits"]["refuse_uploads"] and status["limits"]["refuse_audits"]
    assert "clock" in str(status["services"]["storage"]["uploads_refused"])
    hardware = flow.web_json(box, "/api/hardware")
    assert hardware["clock"]["state"] == "far_off"
    assert any(f["check"] == "clock" and f["level"] == "fail" for f in hardware["findings"])

    with NtpServer() as ntp:  # time comes back: 10.0.2.2:123 on the host
        flow.wait_until(
            "the clock to be synchronised and mining to resume",
            lambda: "clock" not in flow.web_json(box, "/api/status")["limits"]["reasons"],
            600,
            box,
        )
        assert ntp.answered > 0
        assert float(flow.ssh(box, key, "date +%s")) > RELEASE_FLOOR
        events = [e["message"] for e in flow.web_json(box, "/api/events")["events"]]
        assert any("until the time is synchronised" in m for m in events)
        assert any(m.endswith("all work resumes") for m in events)
        # Everything acknowledged before the cut is still there.
        for n, (file_id, data) in enumerate(acked.items()):
            out = tmp_path / f"{n}.out"
            got = flow.wait_until(
                f"acknowledged file {n} to read back",
                lambda f=file_id, o=out: read_back(box, token, f, o),  # type: ignore[misc]
                600,
                box,
            )
            assert got == data
