"""Fleet benchmark: SSH fan-out, image build, flash throughput against dd, verify time.

    .venv/bin/python -m bench.fleet [--boxes 20] [--flash-mib 512] [--root-mib 512]

- enroll and status over N real sshd boxes (tests/provisioning/boxes.py) in parallel, against
  the same on one box: the speed-up is N x t(1) / t(N);
- `image build` of a synthetic Raspberry Pi OS image whose root holds --root-mib / 2 of data;
- `flash` of a --flash-mib image of random bytes to a file, against `dd bs=4M conv=fsync` to the
  same file, measured in the same run, alternating; and the read-back verify time.

Needs sshd, ssh-keygen, mtools, e2fsprogs, dosfstools (scripts/setup.sh --test). Prints figures
only; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provisioning import flash, fleet, image, recipe
from provisioning.inventory import Inventory
from provisioning.remote import SshOptions, parse_host
from tests.provisioning.boxes import TOKEN, start_boxes, stop_boxes
from tests.provisioning.conftest import write_recipe
from tests.provisioning.pi_image import make_pi_image
from tests.provisioning.wheels import make_wheel


def _timed(fn: object, *args: object, **kwargs: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - t0, out


def _cpu() -> float:
    """CPU seconds this process (the fleet tool's side) has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def bench_ssh(work: Path, count: int, wheelhouse: Path, key: Path) -> None:
    print(f"\n== SSH fan-out: {count} real sshd boxes on loopback ==")
    t0 = time.perf_counter()
    boxes = start_boxes(work / "boxes", count, wheelhouse, key.with_suffix(".pub"), agents=False)
    print(f"boxes up in {time.perf_counter() - t0:.1f} s (setup, not measured)")
    opts = SshOptions(user="root", identity_file=key)
    try:
        specs = [parse_host(b.spec, "pi") for b in boxes]
        one_enroll, one_status, all_enroll, all_status = [], [], [], []
        client_cpu = {"enroll": 0.0, "status": 0.0}
        for rnd in range(2):
            inv1 = Inventory(work / f"one{rnd}.db")
            t, res = _timed(fleet.enroll, inv1, specs[:1], TOKEN, opts)
            assert all(r.ok for r in res), res  # type: ignore[attr-defined]
            one_enroll.append(t)
            one_status.append(_timed(fleet.status, inv1, opts)[0])
            invn = Inventory(work / f"all{rnd}.db")
            cpu0 = _cpu()
            t, res = _timed(fleet.enroll, invn, specs, TOKEN, opts)
            client_cpu["enroll"] = _cpu() - cpu0
            assert all(r.ok for r in res), [r.message for r in res if not r.ok]  # type: ignore[attr-defined]
            all_enroll.append(t)
            cpu0 = _cpu()
            all_status.append(_timed(fleet.status, invn, opts)[0])
            client_cpu["status"] = _cpu() - cpu0
        for name, one, many in (
            ("enroll", one_enroll, all_enroll),
            ("status", one_status, all_status),
        ):
            t1, tn = min(one), min(many)
            print(
                f"{name:7} 1 box {t1:6.2f} s | {count} boxes in parallel {tn:6.2f} s | "
                f"serial equivalent {count * t1:6.1f} s | speed-up {count * t1 / tn:5.1f}x | "
                f"fleet-tool CPU {client_cpu[name]:.2f} s for {count} boxes"
            )
        print("(every sshd and box-side helper shares this machine's CPUs with the tool)")
    finally:
        stop_boxes(boxes)


def bench_image(work: Path, root_mib: int, wheelhouse: Path, key: Path) -> None:
    print(f"\n== image build: synthetic Raspberry Pi OS, {root_mib} MiB root ==")
    base = make_pi_image(
        work / "base.img", root_sectors=root_mib << 11, payload=(root_mib // 2) << 20
    )
    rec = recipe.load(write_recipe(work / "recipe.toml", key, wheelhouse))
    times = []
    for i in range(2):
        t, result = _timed(image.build, base, rec, work / f"built{i}.img")
        times.append(t)
    r: image.BuildResult = result  # type: ignore[assignment]
    print(
        f"image {r.size / 1e6:.0f} MB ({r.mapped_bytes / 1e6:.0f} MB mapped): build "
        f"{min(times):.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)})"
    )
    zst = work / "base.img.zst"
    subprocess.run(["zstd", "-q", "-1", "-T0", str(base), "-o", str(zst)], check=True)
    t, _ = _timed(image.build, zst, rec, work / "built-zst.img")
    print(f"from .zst base ({zst.stat().st_size / 1e6:.0f} MB): build {t:.2f} s")


def _drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def bench_flash(work: Path, mib: int) -> None:
    print(f"\n== flash: {mib} MiB image of random bytes to a file, vs dd (same file) ==")
    img = work / "flash.img"
    with img.open("wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
    dest = work / "card.img"
    dd_times, write_times, verify_times, total_times = [], [], [], []
    for _ in range(5):
        dest.unlink(missing_ok=True)
        _drop_caches()
        t0 = time.perf_counter()
        subprocess.run(
            ["dd", f"if={img}", f"of={dest}", "bs=4M", "conv=fsync", "status=none"], check=True
        )
        dd_times.append(time.perf_counter() - t0)
        dest.unlink()
        _drop_caches()
        t, res = _timed(flash.flash, img, dest)
        r: flash.FlashResult = res  # type: ignore[assignment]
        write_times.append(r.write_seconds)
        verify_times.append(r.verify_seconds)
        total_times.append(t)
    size = img.stat().st_size / 1e6
    dd, wr = statistics.median(dd_times), statistics.median(write_times)
    for name, rate, best, runs in (
        ("dd bs=4M conv=fsync", size / dd, size / min(dd_times), dd_times),
        ("bitchat-fleet flash", size / wr, size / min(write_times), write_times),
    ):
        print(
            f"{name} : {rate:6.1f} MB/s median, {best:6.1f} MB/s best "
            f"(runs: {', '.join(f'{x:.2f}' for x in runs)} s)"
        )
    print(
        f"flash write / dd    : {dd / wr:.0%} of dd (medians), "
        f"{min(dd_times) / min(write_times):.0%} (best runs)"
    )
    print(
        f"read-back verify    : {size / statistics.median(verify_times):7.1f} MB/s "
        f"({statistics.median(verify_times):.2f} s, page cache dropped)"
    )
    print(f"flash total (check+write+verify): {statistics.median(total_times):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--flash-mib", type=int, default=512)
    ap.add_argument("--root-mib", type=int, default=512)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        wheelhouse = work / "wheelhouse"
        make_wheel("0.1.0", wheelhouse)
        key = work / "keys" / "operator"
        key.parent.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        print(
            f"bench.fleet on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
            f"Python {sys.version.split()[0]}"
        )
        bench_image(work, args.root_mib, wheelhouse, key)
        bench_flash(work, args.flash_mib)
        bench_ssh(work, args.boxes, wheelhouse, key)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
