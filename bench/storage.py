"""Storage benchmark: the chunk store against ``dd`` on the same filesystem, audits, scrub,
index rebuild, and put/get through an 8-node devnet. Run as ``python -m bench.storage``.

Every figure comes from this run; peers are measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from node import state
from node.identity import Identity
from node.storage_agent import audit, index, merkle, scrub
from node.storage_agent.contracts import Contract
from node.storage_agent.devnet import Devnet
from node.storage_agent.ledger import Ledger
from node.storage_agent.provider import Capacity, Provider
from node.storage_agent.store import ChunkStore, chunk_id, encode_tree
from node.storage_agent.transfer import get_file, put_file

MIB = 1024 * 1024
CHUNK = 4 * MIB
UPLOADS = 4


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


def dd_files(paths: list[Path], args: list[str]) -> float:
    """One ``dd`` per file (each a process of its own, like one upload per chunk)."""
    t = time.perf_counter()
    for path in paths:
        subprocess.run(["dd", *[a.format(path=path) for a in args], "status=none"], check=True)
    return time.perf_counter() - t


def hashing_rate(payloads: list[bytes]) -> float:
    """MiB/s of the hashing ``put`` must do (id and Merkle leaves, in two threads as there)."""
    with ThreadPoolExecutor(1) as pool:
        t = time.perf_counter()
        for p in payloads:
            ident = pool.submit(chunk_id, p)
            merkle.leaves(p)
            ident.result()
        return len(payloads) * CHUNK / (time.perf_counter() - t) / MIB


def bench_ingest_and_read(root: Path, n: int, repeat: int) -> tuple[Provider, list[bytes]]:
    """Store vs dd on the same filesystem, ``repeat`` rounds; medians printed.

    Each round runs the store and its ``dd`` reference back to back (the order swapped every
    round) and the ratio is the median of the rounds' own ratios: on a shared machine the
    disk's speed drifts between rounds far more than within one.

    Three ``dd`` references write the same bytes in 4 MiB blocks: ``oflag=dsync`` (one file,
    each block synced: one sync per chunk, as the store; the target's reference),
    ``count=1 conv=fsync`` per file (a file created and fsynced per chunk, as the store, plus
    a process start each) and one file with ``conv=fsync`` (a single fsync at the end, which
    the store cannot match without acknowledging chunks that are not yet durable).
    """
    node = Identity.generate()
    prov = make_provider(root, node)
    out = root / "dd.out"
    dd_dir = root / "dd-files"
    dd_dir.mkdir()
    ours_w: list[float] = []
    ours_c: list[float] = []
    refs: dict[str, list[float]] = {"dsync": [], "files": [], "one": []}
    hashing: list[float] = []
    ids: list[bytes] = []
    ratios: list[float] = []

    def store_run(payloads: list[bytes]) -> None:
        t = time.perf_counter()
        ids.extend(prov.store.put(p) for p in payloads)
        ours_w.append(n * CHUNK / (time.perf_counter() - t) / MIB)

    def dsync_run() -> None:
        out.unlink(missing_ok=True)
        dsync = ["if=/dev/zero", f"of={out}", "bs=4M", f"count={n}", "oflag=dsync"]
        refs["dsync"].append(n * CHUNK / dd(dsync) / MIB)

    for rnd in range(repeat):
        payloads = [os.urandom(CHUNK) for _ in range(n)]
        pair = (functools.partial(store_run, payloads), dsync_run)
        for run in pair if rnd % 2 == 0 else pair[::-1]:
            run()
        ratios.append(ours_w[-1] / refs["dsync"][-1])
        hashing.append(hashing_rate(payloads))
        payloads = [os.urandom(CHUNK) for _ in range(n)]
        with ThreadPoolExecutor(UPLOADS) as pool:
            t = time.perf_counter()
            ids += list(pool.map(prov.store.put, payloads))
            ours_c.append(n * CHUNK / (time.perf_counter() - t) / MIB)
        files = [dd_dir / f"{i}" for i in range(n)]
        for f in files:
            f.unlink(missing_ok=True)
        one = ["if=/dev/zero", "of={path}", "bs=4M", "count=1", "conv=fsync"]
        refs["files"].append(n * CHUNK / dd_files(files, one) / MIB)
        one_file = root / "dd.one"
        one_file.unlink(missing_ok=True)
        refs["one"].append(
            n
            * CHUNK
            / dd(["if=/dev/zero", f"of={one_file}", "bs=4M", f"count={n}", "conv=fsync"])
            / MIB
        )
        one_file.unlink()
    ours, ref = statistics.median(ours_w), statistics.median(refs["dsync"])
    print(
        f"ingest (4 MiB chunks, fsync each, with tree cache)  store {ours:8.1f} MiB/s   "
        f"dd oflag=dsync {ref:8.1f} MiB/s   ratio {statistics.median(ratios):6.1%}   "
        f"(target >= 80 %; {repeat} rounds: store {_runs(ours_w)}, dd {_runs(refs['dsync'])}, "
        f"ratios {_pcts(ratios)})"
    )
    for key, label in (
        ("files", "dd count=1 conv=fsync per file"),
        ("one", "dd conv=fsync, 1 file"),
    ):
        r = statistics.median(refs[key])
        print(
            f"  against {label:31s} {r:8.1f} MiB/s   ratio {ours / r:6.1%}   ({_runs(refs[key])})"
        )
    c = statistics.median(ours_c)
    print(
        f"  store, {UPLOADS} uploads at a time (as a node serving several clients) {c:8.1f} MiB/s"
        f"   ratio to dd oflag=dsync {c / ref:6.1%}   ({_runs(ours_c)})"
    )
    hs = statistics.median(hashing)
    print(
        f"  hashing alone (id + Merkle leaves, no I/O)   {hs:8.1f} MiB/s   = the store's ceiling "
        f"on this CPU; ratio to dd oflag=dsync {hs / ref:6.1%}   ({_runs(hashing)})"
    )
    shutil.rmtree(dd_dir)
    # The dd file holds as many bytes as one read pass over n chunks.
    batch = ids[-n:]
    many, one_r, verified, ref_r, ref_files = [], [], [], [], []
    read_ratios: list[float] = []
    paths = [prov.store.path_of(cid) for cid in batch]
    cold = True

    def streamed() -> None:
        t = time.perf_counter()
        for cid in batch:
            for _piece in prov.store.stream(cid):
                pass
        many.append(n * CHUNK / (time.perf_counter() - t) / MIB)

    def dd_read() -> None:
        ref_r.append(n * CHUNK / dd([f"if={out}", "of=/dev/null", "bs=4M"]) / MIB)

    for rnd in range(repeat):
        for run in (streamed, dd_read) if rnd % 2 == 0 else (dd_read, streamed):
            cold = drop_caches()
            run()
        read_ratios.append(many[-1] / ref_r[-1])
        drop_caches()
        ref_files.append(n * CHUNK / dd_files(paths, ["if={path}", "of=/dev/null", "bs=4M"]) / MIB)
        drop_caches()
        t = time.perf_counter()
        for cid in batch:
            prov.store.read(cid)
        one_r.append(n * CHUNK / (time.perf_counter() - t) / MIB)
        drop_caches()
        t = time.perf_counter()
        for cid in batch:
            prov.store.read_verified(cid)
        verified.append(n * CHUNK / (time.perf_counter() - t) / MIB)
    note = "cold cache" if cold else "warm cache (no root)"
    m, r = statistics.median(many), statistics.median(ref_r)
    print(
        f"read ({note}), streamed (scrub, rebuild)   store {m:8.1f} MiB/s   dd {r:8.1f} MiB/s"
        f"   ratio {statistics.median(read_ratios):6.1%}   (target >= 90 %; store {_runs(many)}, "
        f"dd {_runs(ref_r)}, ratios {_pcts(read_ratios)})"
    )
    o, v = statistics.median(one_r), statistics.median(verified)
    print(
        f"read ({note}), whole chunk                 store {o:8.1f} MiB/s   ratio {o / r:6.1%}"
        f"   (store {_runs(one_r)})"
    )
    rf = statistics.median(ref_files)
    print(
        f"  dd per chunk file (a process each)          {rf:8.1f} MiB/s   streamed {m / rf:6.1%}"
        f"   whole {o / rf:6.1%}   ({_runs(ref_files)})"
    )
    held = [prov.store.read(cid) for cid in batch[: max(1, n // 4)]]
    t = time.perf_counter()
    for data in held:
        chunk_id(data)
    hashed = len(held) * CHUNK / (time.perf_counter() - t) / MIB
    del held
    print(
        f"read ({note}), as served (hash checked)   store {v:8.1f} MiB/s   ratio {v / r:6.1%}"
        f"   (BLAKE2b alone, in memory: {hashed:.1f} MiB/s; store {_runs(verified)})"
    )
    out.unlink()
    return prov, ids


def _pcts(values: list[float]) -> str:
    return "/".join(f"{v:.0%}" for v in values)


def _runs(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def bench_audits(prov: Provider, ids: list[bytes], rounds: int) -> None:
    client = Identity.generate()
    contracts = {}
    for cid in ids:
        data = prov.store.read(cid)
        contracts[cid] = Contract(
            cid, merkle.root(data), len(data), 1, 0, 10**10, client.public_key, prov.node.public_key
        )
    auditor = audit.Auditor()

    def answer_times(count: int, before: Callable[[bytes], None]) -> list[float]:
        out = []
        for i in range(count):
            cid = ids[i % len(ids)]
            before(cid)
            ch = auditor.challenge(contracts[cid], os.urandom(32), 0.0)
            t = time.perf_counter()
            resp = prov.prove(ch)
            out.append((time.perf_counter() - t) * 1000)
            assert auditor.receive(resp, 1.0).outcome is audit.Outcome.SUCCESS
        return out

    def nothing(_cid: bytes) -> None:
        pass

    def no_cache(cid: bytes) -> None:
        prov.store.tree_path(cid).unlink(missing_ok=True)

    def cold(_cid: bytes) -> None:
        drop_caches()

    warm = answer_times(rounds, nothing)
    t = time.perf_counter()
    ch = auditor.challenge(contracts[ids[0]], os.urandom(32), 0.0)
    auditor.receive(prov.prove(ch), 1.0)
    verify_ms = (time.perf_counter() - t) * 1000
    print(
        f"audit answer, 4 MiB chunk, 16 samples, tree cache      p50 {_q(warm, 50):6.1f} ms   "
        f"p99 {_q(warm, 99):6.1f} ms   (target p99 <= 50 ms; {rounds} audits; "
        f"answer + verify {verify_ms:.1f} ms)"
    )
    cold_n = max(20, rounds // 10)
    colds = answer_times(cold_n, cold)
    print(
        f"audit answer, cold page cache (dropped before each)   p50 {_q(colds, 50):6.1f} ms   "
        f"p99 {_q(colds, 99):6.1f} ms   ({cold_n} audits)"
    )
    rebuilt = prov.counters.trees_rebuilt
    full = answer_times(min(rounds, len(ids)), no_cache)
    assert prov.counters.trees_rebuilt - rebuilt == len(full)
    print(
        f"audit answer without a cache (whole chunk hashed)    p50 {_q(full, 50):6.1f} ms   "
        f"p99 {_q(full, 99):6.1f} ms   ({len(full)} audits, each also rewrites the cache)"
    )


def _q(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] if len(values) > 1 else values[0]


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
        store.tree_path(cid).write_bytes(encode_tree(cid, len(data), merkle.leaves(data)))
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
            f"index rebuild, {counts['chunks']} chunks of 1 KiB + caches ({kind:>22}) {dt:7.1f} s "
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


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", type=Path, help="Where to work (default: a temp dir under /var/tmp).")
    ap.add_argument("--chunks", type=int, default=64, help="4 MiB chunks for ingest/read/scrub.")
    ap.add_argument("--audits", type=int, default=300)
    ap.add_argument(
        "--repeat", type=int, default=5, help="Store/dd rounds, alternated; medians printed."
    )
    ap.add_argument(
        "--only",
        choices=["disk", "rebuild", "devnet"],
        help="Run one part: disk (ingest, read, audits, scrub), rebuild, or devnet.",
    )
    ap.add_argument("--rebuild", type=int, default=100_000, help="Chunks for the rebuild test.")
    ap.add_argument("--devnet-mib", type=int, default=16)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir or "/var/tmp"))
    try:
        fs = subprocess.run(["df", "-T", str(root)], capture_output=True, text=True).stdout
        print(f"working in {root} ({fs.splitlines()[-1].split()[1]})")
        print(f"load before: {_load()}")
        if args.only in (None, "disk"):
            prov, ids = bench_ingest_and_read(root, args.chunks, args.repeat)
            bench_audits(prov, ids, args.audits)
            bench_scrub(prov, ids[-args.chunks :])
            prov.db.conn.close()
        if args.only in (None, "rebuild"):
            bench_rebuild(root, args.rebuild)
        if args.only in (None, "devnet"):
            bench_devnet(root, args.devnet_mib * MIB)
        print(f"load after: {_load()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
