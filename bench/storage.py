"""Storage benchmark: the chunk store against ``dd`` on the same filesystem, audits, scrub,
index rebuild, and put/get through an 8-node devnet. Run as ``python -m bench.storage``.

Every figure comes from this run; peers are measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from node import state
from node.identity import Identity
from node.storage_agent import audit, index, merkle, scrub
from node.storage_agent.contracts import Contract
from node.storage_agent.devnet import Devnet
from node.storage_agent.ledger import Ledger
from node.storage_agent.provider import Capacity, Provider
from node.storage_agent.store import ChunkStore, chunk_id
from node.storage_agent.transfer import get_file, put_file

MIB = 1024 * 1024
CHUNK = 4 * MIB


def drop_caches() -> bool:
    """Empty the page cache so reads come from the disk (root only)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def dd(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", *args, "status=none"], check=True)
    return time.perf_counter() - t


def make_provider(root: Path, node: Identity) -> Provider:
    store = ChunkStore(root / "disk", node.node_id_text)
    store.initialise(expect_existing=False)
    db = state.open_state(root / "state.db")
    index.setup(db)
    ledger = Ledger(db, node.node_id, store.vouchers)
    return Provider(node, store, db, ledger, Capacity(0))


def bench_ingest_and_read(root: Path, n: int) -> tuple[Provider, list[bytes]]:
    node = Identity.generate()
    prov = make_provider(root, node)
    payloads = [os.urandom(CHUNK) for _ in range(n)]
    t = time.perf_counter()
    ids = [prov.store.put(p) for p in payloads]
    ours = n * CHUNK / (time.perf_counter() - t) / MIB
    out = f"of={root / 'dd.out'}"
    ref = n * CHUNK / dd(["if=/dev/zero", out, "bs=4M", f"count={n}", "oflag=dsync"]) / MIB
    print(
        f"ingest (4 MiB chunks, fsync each)   store {ours:8.1f} MiB/s   dd oflag=dsync "
        f"{ref:8.1f} MiB/s   ratio {ours / ref:6.1%}"
    )
    cold = drop_caches()
    t = time.perf_counter()
    for cid in ids:
        prov.store.read(cid)
    raw = n * CHUNK / (time.perf_counter() - t) / MIB
    drop_caches()
    t = time.perf_counter()
    for cid in ids:
        prov.store.read_verified(cid)
    verified = n * CHUNK / (time.perf_counter() - t) / MIB
    drop_caches()
    ref = n * CHUNK / dd([f"if={root / 'dd.out'}", "of=/dev/null", "bs=4M"]) / MIB
    note = "cold cache" if cold else "warm cache (no root)"
    print(
        f"read ({note})   store {raw:8.1f} MiB/s   dd {ref:8.1f} MiB/s   ratio {raw / ref:6.1%}"
        f"   (with hash check, as served: {verified:.1f} MiB/s)"
    )
    (root / "dd.out").unlink()
    return prov, ids


def bench_audits(prov: Provider, ids: list[bytes], rounds: int) -> None:
    client = Identity.generate()
    contracts = {}
    for cid in ids:
        data = prov.store.read(cid)
        contracts[cid] = Contract(
            cid, merkle.root(data), len(data), 1, 0, 10**10, client.public_key, prov.node.public_key
        )
    auditor = audit.Auditor()
    answer_ms, verify_ms = [], []
    for i in range(rounds):
        cid = ids[i % len(ids)]
        ch = auditor.challenge(contracts[cid], os.urandom(32), 0.0)
        t = time.perf_counter()
        resp = prov.prove(ch)
        answer_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        assert auditor.receive(resp, 1.0).outcome is audit.Outcome.SUCCESS
        verify_ms.append((time.perf_counter() - t) * 1000)
    q = statistics.quantiles(answer_ms, n=100)
    print(
        f"audit answer, 4 MiB chunk, 16 samples  p50 {q[49]:6.1f} ms   p99 {q[98]:6.1f} ms   "
        f"(target p99 <= 50 ms); verify p50 {statistics.median(verify_ms):.2f} ms"
    )


def bench_scrub(prov: Provider, ids: list[bytes]) -> None:
    now = time.time()
    with prov.db.conn:
        for cid in ids:
            index.add_chunk(prov.db, cid, CHUNK, now)
    drop_caches()
    stats = scrub.ScrubStats()
    t = time.perf_counter()
    scrub.scrub_batch(prov, 0.0, len(ids), lambda _cid: None, stats)
    dt = time.perf_counter() - t
    print(
        f"scrub (idle I/O class, cold cache)   {stats.bytes / dt / MIB:8.1f} MiB/s "
        f"over {stats.scrubbed} chunks"
    )


def bench_rebuild(root: Path, count: int) -> None:
    node = Identity.generate()
    store = ChunkStore(root / "rebuild", node.node_id_text)
    store.initialise(expect_existing=False)
    for i in range(count):
        data = i.to_bytes(8, "big") * 128
        cid = chunk_id(data)
        path = store.path_of(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for verify in (False, True):
        db_path = root / f"rebuild-{verify}.db"
        db = state.open_state(db_path)
        index.setup(db)
        drop_caches()
        t = time.perf_counter()
        counts = index.rebuild(db, store, verify=verify)
        dt = time.perf_counter() - t
        db.conn.close()
        kind = "re-hashing every chunk" if verify else "sizes only"
        print(
            f"index rebuild, {counts['chunks']} chunks of 1 KiB ({kind:>22})  {dt:7.1f} s  "
            f"({counts['chunks'] / dt:,.0f} chunks/s)"
        )


def bench_devnet(root: Path, size: int) -> None:
    src = root / "put.bin"
    src.write_bytes(os.urandom(size))
    with Devnet(root / "devnet", 8) as net:
        net.wait_peers()
        node = net.nodes[1]
        procs = [psutil.Process(n.process.pid) for n in net.nodes if n.process]
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        peak[0] = max(peak[0], p.memory_info().rss)
                time.sleep(0.05)

        idle = max(p.memory_info().rss for p in procs)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        file_id = put_file(node.web, src, node.token)
        put_s = time.perf_counter() - t
        t = time.perf_counter()
        get_file(node.web, file_id, root / "get.bin", node.token)
        get_s = time.perf_counter() - t
        stop.set()
        sampler.join()
        assert (root / "get.bin").read_bytes() == src.read_bytes()
    print(
        f"8-node devnet (4-of-8, loopback transport)  put {size / put_s / MIB:6.2f} MiB/s   "
        f"get {size / get_s / MIB:6.2f} MiB/s   ({size // MIB} MiB file)"
    )
    print(
        f"agent RSS   idle {idle / MIB:6.1f} MiB   peak while storing {peak[0] / MIB:6.1f} MiB "
        f"(target idle <= 60 MiB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", type=Path, help="Where to work (default: a temp dir under /var/tmp).")
    ap.add_argument("--chunks", type=int, default=64, help="4 MiB chunks for ingest/read/scrub.")
    ap.add_argument("--audits", type=int, default=300)
    ap.add_argument("--rebuild", type=int, default=100_000, help="Chunks for the rebuild test.")
    ap.add_argument("--devnet-mib", type=int, default=16)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir or "/var/tmp"))
    try:
        fs = subprocess.run(["df", "-T", str(root)], capture_output=True, text=True).stdout
        print(f"working in {root} ({fs.splitlines()[-1].split()[1]})")
        prov, ids = bench_ingest_and_read(root, args.chunks)
        bench_audits(prov, ids, args.audits)
        bench_scrub(prov, ids)
        prov.db.conn.close()
        bench_rebuild(root, args.rebuild)
        bench_devnet(root, args.devnet_mib * MIB)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
