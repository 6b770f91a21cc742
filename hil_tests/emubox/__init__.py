"""The emulated box: an arm64 Debian laid out like Raspberry Pi OS, booted under QEMU.

:func:`ensure_base` builds (once) and caches the root filesystem, kernel and initrd;
:func:`make_base_image` turns the cached tree into an SD-card image with the Raspberry Pi OS
partition layout (MBR: FAT32 boot partition + ext4 root) without mounting anything;
:class:`EmulatedBox` boots an image with ``qemu-system-aarch64 -M virt`` and user-mode
networking, forwards SSH and the dashboard to free loopback ports, and injects faults through
the QEMU monitor (QMP): power cut, data disk detach/attach, network cut, clock offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = Path(os.environ.get("BITCHAT_HIL_CACHE", "/var/cache/bitchat-hil"))
BOOT_MIB = 256
HOTPLUG_PORT = "hotplug0"
SECTOR = 512


class EmuBoxError(RuntimeError):
    """The emulated box could not be built, booted or driven."""


@dataclass(frozen=True)
class Base:
    """A cached base: the root tree, its kernel and initrd."""

    rootfs: Path
    kernel: Path
    initrd: Path


def ensure_base(cache: Path = DEFAULT_CACHE) -> Base:
    """Build the base into ``cache`` unless it is already there (needs root the first time)."""
    result = subprocess.run(
        [str(HERE / "build-base.sh"), str(cache)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise EmuBoxError(f"building the emulated box base failed: {result.stderr.strip()[-800:]}")
    return Base(cache / "rootfs", cache / "vmlinuz", cache / "initrd.img")


def prebuild_wheels(wheelhouse: Path, cache: Path = DEFAULT_CACHE) -> None:
    """Replace the source distributions in ``wheelhouse`` by aarch64 wheels built in the base."""
    result = subprocess.run(
        [str(HERE / "build-wheels.sh"), str(cache), str(wheelhouse)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise EmuBoxError(f"building aarch64 wheels failed: {result.stderr.strip()[-800:]}")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise EmuBoxError(f"{cmd[0]} failed: {result.stderr.strip()[-500:]}")
    return result


def make_base_image(base: Base, out: Path, root_mib: int = 2048) -> Path:
    """Write an SD-card image like Raspberry Pi OS Lite: MBR, FAT32 boot (p1), ext4 root (p2).

    Nothing is mounted: the FAT side is made with mkfs.vfat and mtools, the ext4 side with
    ``mke2fs -d`` from the cached tree; the partitions are then laid into one file.
    """
    work = out.parent / (out.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    boot, root = work / "boot.img", work / "root.img"
    with open(boot, "wb") as fh:
        fh.truncate(BOOT_MIB << 20)
    _run(["mkfs.vfat", "-F", "32", "-n", "bootfs", str(boot)])
    # Raspberry Pi OS keeps the kernel and cmdline on the boot partition; ours boots by -kernel,
    # but the files are there so the layout and the image builder see what they expect.
    cmdline = work / "cmdline.txt"
    cmdline.write_text("console=ttyAMA0 root=/dev/vda2 rootfstype=ext4 fsck.repair=yes rootwait\n")
    config_txt = work / "config.txt"
    config_txt.write_text("# emulated box: booted by QEMU -kernel\narm_64bit=1\n")
    _run(["mcopy", "-i", str(boot), str(cmdline), str(config_txt), str(base.kernel), "::/"])
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs", "-d", str(base.rootfs),
          str(root), f"{root_mib}M"])  # fmt: skip
    start1 = 8192
    start2 = start1 + (BOOT_MIB << 20) // SECTOR
    total = start2 * SECTOR + (root_mib << 20)
    with open(out, "wb") as fh:
        fh.truncate(total)
    layout = (
        "label: dos\nlabel-id: 0x62697463\nunit: sectors\n"
        f"start={start1}, size={(BOOT_MIB << 20) // SECTOR}, type=c\n"
        f"start={start2}, size={(root_mib << 20) // SECTOR}, type=83\n"
    )
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", str(out)], input=layout)
    for part, start in ((boot, start1), (root, start2)):
        _run(["dd", f"if={part}", f"of={out}", "bs=4M", "conv=notrunc,sparse",
              f"seek={start * SECTOR}", "oflag=seek_bytes", "status=none"])  # fmt: skip
    shutil.rmtree(work)
    return out


NTP_EPOCH = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)


def _ntp_time(t: float) -> bytes:
    return struct.pack("!II", int(t) + NTP_EPOCH, int((t % 1) * 2**32))


class NtpServer:
    """A minimal SNTP server (RFC 4330) on the host, serving the host's clock.

    The guest reaches it at 10.0.2.2:123: user-mode networking maps that address to the host's
    loopback. Binding port 123 needs root.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 123) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.5)
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            received = time.time()
            if len(request) < 48 or request[0] & 0x7 != 3:  # client mode only
                continue
            version = (request[0] >> 3) & 0x7
            now = time.time()
            reply = (
                bytes([(version << 3) | 4, 1, request[2], 0xEC])  # LI 0, server, stratum 1
                + struct.pack("!II", 0, 1 << 10)  # root delay, root dispersion (~16 ms)
                + b"LOCL"
                + _ntp_time(now)  # reference time
                + request[40:48]  # originate: the client's transmit time
                + _ntp_time(received)
                + _ntp_time(time.time())
            )
            self.sock.sendto(reply, addr)
            self.answered += 1

    def __enter__(self) -> NtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmulatedBox:
    """One QEMU arm64 box. Use as a context manager; it always kills QEMU on exit."""

    image: Path
    base: Base
    workdir: Path
    memory_mib: int = 1024
    cpus: int = 2
    guest_ports: tuple[int, ...] = (7780,)
    clock_offset: str | None = None
    """QEMU ``-rtc base=`` value, e.g. ``2001-01-01`` for a clock far off at boot."""
    ssh_port: int = field(default_factory=free_port)
    forwards: dict[int, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    boots: int = 0
    started: list[float] = field(default_factory=list)
    """time.monotonic() of every power-on (QEMU start), the first boot's reboot included."""
    data_disks: dict[str, Path] = field(default_factory=dict)
    """Disks plugged in (by node name); they stay plugged across power cuts and reboots."""

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    def cmdline(self) -> str:
        """The kernel command line the image's boot partition holds, as a Pi's firmware reads it.

        Read at every (re)boot, so first-boot hooks that edit cmdline.txt behave as on a Pi.
        """
        offset = 8192 * SECTOR
        result = subprocess.run(
            ["mtype", "-i", f"{self.image}@@{offset}", "::cmdline.txt"],
            capture_output=True, text=True,
        )  # fmt: skip
        text = result.stdout.strip() if result.returncode == 0 else ""
        return text or "console=ttyAMA0 root=/dev/vda2 rootfstype=ext4 rootwait"

    def command(self) -> list[str]:
        if not self.forwards:
            self.forwards = {port: free_port() for port in self.guest_ports}
        fwd = ",".join(
            [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
            + [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items()]
        )
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72",
            "-smp", str(self.cpus), "-m", str(self.memory_mib), "-nographic",
            "-kernel", str(self.base.kernel), "-initrd", str(self.base.initrd),
            "-append", self.cmdline(), "-no-reboot",
            "-drive", f"file={self.image},if=none,format=raw,id=sd,cache=writeback",
            "-device", "virtio-blk-pci,drive=sd,id=sd0",
            "-netdev", f"user,id=net0,{fwd}", "-device", "virtio-net-pci,netdev=net0,id=nic0",
            "-device", "virtio-rng-pci",  # entropy for first-boot key generation
            # an empty PCIe slot, so a data disk can be plugged in and pulled out while running
            "-device", f"pcie-root-port,id={HOTPLUG_PORT},bus=pcie.0,chassis=1",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", f"file,id=console,path={self.console_log},append=on",
            "-serial", "chardev:console", "-monitor", "none",
        ]  # fmt: skip
        for node_id, path in self.data_disks.items():
            blockdev = f"driver=raw,node-name={node_id},file.driver=file,file.filename={path}"
            device = f"virtio-blk-pci,drive={node_id},id={node_id}0,bus={HOTPLUG_PORT}"
            cmd += ["-blockdev", blockdev, "-device", device]
        if self.clock_offset:
            cmd += ["-rtc", f"base={self.clock_offset},clock=vm"]
        return cmd

    def start(self) -> None:
        """Power on. QEMU runs with -no-reboot; :meth:`poll` powers on again after a reboot."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "qemu.err", "ab") as err:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True,
            )  # fmt: skip
        self.boots += 1
        self.started.append(time.monotonic())

    def poll(self) -> None:
        """Restart QEMU when the guest rebooted (exit 0); raise when QEMU failed."""
        if self.process is None or self.process.poll() is None:
            return
        if self.process.returncode != 0:
            raise EmuBoxError(f"QEMU exited with {self.process.returncode}: {self.tail()}")
        self.start()

    def wait_for_ssh(self, timeout: float = 600.0) -> None:
        """Wait until sshd answers with its banner (first boot generates host keys)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s,
            ):
                s.settimeout(10)
                if s.recv(64).startswith(b"SSH-"):
                    return
            time.sleep(2)
        raise EmuBoxError(f"no SSH on the emulated box after {timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return " | ".join(text.splitlines()[-lines:])

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its result."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for cmd in (
                {"execute": "qmp_capabilities"},
                {"execute": command, "arguments": arguments},
            ):
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise EmuBoxError(f"QMP {cmd['execute']}: {reply['error'].get('desc')}")
                    break
            return reply.get("return")

    def power_cut(self) -> None:
        """Pull the plug: QEMU dies at once, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def attach_data_disk(self, path: Path, node_id: str = "data") -> None:
        """Plug a raw disk image in (a USB disk on a Pi); the guest sees a new virtio disk."""
        self.qmp("blockdev-add", driver="raw", **{"node-name": node_id},
                 file={"driver": "file", "filename": str(path)})  # fmt: skip
        self.qmp("device_add", driver="virtio-blk-pci", drive=node_id, id=f"{node_id}0",
                 bus=HOTPLUG_PORT)  # fmt: skip
        self.data_disks[node_id] = path

    def detach_data_disk(self, node_id: str = "data") -> None:
        """Pull the disk out; the guest's PCIe hotplug driver releases it first."""
        self.qmp("device_del", id=f"{node_id}0")
        deadline = time.monotonic() + 120  # the guest waits 5 s (PCIe attention button), slowly
        while time.monotonic() < deadline:
            with contextlib.suppress(EmuBoxError):
                self.qmp("blockdev-del", **{"node-name": node_id})
                del self.data_disks[node_id]
                return
            time.sleep(0.5)
        raise EmuBoxError("the data disk did not detach within 120 s")

    def set_network(self, up: bool) -> None:
        self.qmp("set_link", name="nic0", up=up)

    def __enter__(self) -> EmulatedBox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.power_cut()
