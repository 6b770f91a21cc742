"""The chunk store: content-addressed files on the data disk, durable before acknowledged.

Layout under the store root (the data disk)::

    storage-id                 verification file: this node's id (a swapped disk is noticed)
    chunks/ab/cd/<id>          chunk bytes, <id> = hex BLAKE2b-256 of the bytes
    chunks/.tmp/               uploads in progress (removed at start: never visible as chunks)
    contracts/ab/<contract id> signed contracts (the index is rebuilt from these and the chunks)
    vouchers/<channel>.log     every voucher received, appended (earnings survive a lost state.db)
    files/<file id>.json       placement records of files this node put into the network

A chunk is written to a temp file, fsynced, renamed into place, and its directory fsynced;
only then does :meth:`ChunkStore.put` return. A power cut at any instant leaves either no file
or the whole file under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.storage_agent.contracts import MAX_CHUNK
from node.storage_agent.errors import ChunkCorrupt, ChunkMissing, StorageError, StoreFull

VERIFY_FILE = "storage-id"
CHUNKS = "chunks"
TMP = ".tmp"
CONTRACTS = "contracts"
VOUCHERS = "vouchers"
FILES = "files"
ID_LEN = 32


class DiskProblem(StorageError):
    """The data disk is missing, swapped or unwritable."""


def chunk_id(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=ID_LEN).digest()


def parse_id(text: str) -> bytes:
    """A chunk or contract id from its 64-hex-digit form; ValueError otherwise."""
    if len(text) != 2 * ID_LEN or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"an id is {2 * ID_LEN} lowercase hex digits, got {text[:80]!r}")
    return bytes.fromhex(text)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp + fsync + rename + dir fsync).

    ``tmp_dir`` lives on the data disk: when it is missing the disk is gone, and nothing is
    written (least of all into the empty mount point it leaves behind).
    """
    if not tmp_dir.is_dir():
        raise DiskProblem(f"{tmp_dir} is missing (data disk unplugged or not mounted?)")
    made = _makedirs(path.parent)
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    for d in made:
        fsync_dir(d.parent)


def append_durable(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync it (creating the file, not its directory)."""
    if not path.parent.is_dir():
        raise DiskProblem(f"{path.parent} is missing (data disk unplugged or not mounted?)")
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)


def _makedirs(path: Path) -> list[Path]:
    """Create missing directories; returns the ones created (outermost first)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            made.append(d)
    return made


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total: int
    free: int


class ChunkStore:
    """Chunk files under ``root`` (file I/O only; the index lives in state.db)."""

    def __init__(self, root: Path, node_id: str) -> None:
        self.root = root
        self.node_id = node_id
        self.chunks = root / CHUNKS
        self.tmp = self.chunks / TMP
        self.contracts = root / CONTRACTS
        self.vouchers = root / VOUCHERS
        self.files = root / FILES

    # -- the disk -------------------------------------------------------------------------

    def disk_problem(self) -> str | None:
        """Why the data disk is unusable right now, or None when it is the right disk."""
        path = self.root / VERIFY_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return f"data disk missing: {path} not found (disk unplugged or not mounted?)"
        except OSError as exc:
            return f"data disk unreadable: {path}: {exc.strerror}"
        if text != self.node_id:
            return f"data disk belongs to another node ({text[:12]}…), not {self.node_id[:12]}…"
        return None

    def initialise(self, *, expect_existing: bool) -> None:
        """Prepare the store; creates the verification file only on a fresh, empty disk.

        With ``expect_existing`` (the index knows chunks) a missing verification file is a
        missing disk, never a reason to start over on whatever is mounted there.
        """
        verify = self.root / VERIFY_FILE
        if not verify.exists():
            if expect_existing:
                raise DiskProblem(self.disk_problem() or "data disk missing")
            if self.chunks.exists() and any(self.chunks.iterdir()):
                raise DiskProblem(
                    f"{self.chunks} holds chunks but {verify} is missing; restore the file "
                    f"with this node's id ({self.node_id}) if this is the right disk"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            write_durable(verify, (self.node_id + "\n").encode(), self.root)
        problem = self.disk_problem()
        if problem:
            raise DiskProblem(problem)
        for d in (self.chunks, self.tmp, self.contracts, self.vouchers, self.files):
            d.mkdir(mode=0o700, exist_ok=True)
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def usage(self) -> DiskUsage:
        st = os.statvfs(self.root)
        return DiskUsage(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    # -- chunks ---------------------------------------------------------------------------

    def path_of(self, cid: bytes) -> Path:
        h = cid.hex()
        return self.chunks / h[:2] / h[2:4] / h

    def has(self, cid: bytes) -> bool:
        return self.path_of(cid).is_file()

    def put(self, data: bytes, expected: bytes | None = None) -> bytes:
        """Store ``data`` durably; returns its id. Idempotent for a chunk already present."""
        if len(data) > MAX_CHUNK:
            raise StorageError(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK}-byte limit")
        cid = chunk_id(data)
        if expected is not None and cid != expected:
            raise ChunkCorrupt(f"chunk bytes hash to {cid.hex()[:16]}…, not {expected.hex()[:16]}…")
        path = self.path_of(cid)
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and chunk_id(path.read_bytes()) == cid:
                return cid
        try:
            write_durable(path, data, self.tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"data disk full while writing chunk {cid.hex()[:16]}…") from exc
            raise StorageError(f"cannot write chunk to {path}: {exc.strerror}") from exc
        return cid

    def read(self, cid: bytes) -> bytes:
        try:
            return self.path_of(cid).read_bytes()
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid.hex()[:16]}… is not stored here") from None
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc

    def read_verified(self, cid: bytes) -> bytes:
        data = self.read(cid)
        if chunk_id(data) != cid:
            raise ChunkCorrupt(f"chunk {cid.hex()[:16]}… is damaged (hash mismatch)")
        return data

    def delete(self, cid: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(cid).unlink()

    def scan(self) -> Iterator[tuple[bytes, int]]:
        """Every chunk file (id, size); stray files are skipped."""
        if not self.chunks.exists():
            return
        for a in sorted(self.chunks.iterdir()):
            if len(a.name) != 2 or not a.is_dir():
                continue
            for b in sorted(a.iterdir()):
                if not b.is_dir():
                    continue
                for f in b.iterdir():
                    try:
                        cid = parse_id(f.name)
                    except ValueError:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        yield cid, f.stat().st_size

    # -- contracts ------------------------------------------------------------------------

    def contract_path(self, contract_id: bytes) -> Path:
        h = contract_id.hex()
        return self.contracts / h[:2] / h

    def put_contract(self, contract_id: bytes, encoded: bytes) -> None:
        write_durable(self.contract_path(contract_id), encoded, self.tmp)

    def delete_contract(self, contract_id: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.contract_path(contract_id).unlink()

    def scan_contracts(self) -> Iterator[bytes]:
        if not self.contracts.exists():
            return
        for a in sorted(self.contracts.iterdir()):
            if not a.is_dir():
                continue
            for f in a.iterdir():
                try:
                    parse_id(f.name)
                    raw = f.read_bytes()
                except (OSError, ValueError):
                    continue
                yield raw
