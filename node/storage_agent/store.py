"""The chunk store: content-addressed files on the data disk, durable before acknowledged.

Layout under the store root (the data disk)::

    storage-id                 verification file: this node's id (a swapped disk is noticed)
    chunks/ab/cd/<id>          chunk bytes, <id> = hex BLAKE2b-256 of the bytes
    chunks/ab/cd/<id>.tree     cache of the chunk's Merkle leaf hashes (checksummed; rebuilt
                               from the chunk whenever missing or damaged)
    chunks/.tmp/               uploads in progress (removed at start: never visible as chunks)
    contracts/ab/<contract id> signed contracts (the index is rebuilt from these and the chunks)
    vouchers/<channel>.log     every voucher received, appended (earnings survive a lost state.db)
    files/<file id>.json       placement records of files this node put into the network

A chunk is written to a temp file and fsynced, renamed into place, and its directory fsynced;
only then does :meth:`ChunkStore.put` return. A power cut at any instant leaves either no chunk
or the whole chunk under its final name. Its tree cache is renamed into place just after the
chunk and made durable by the same directory fsync, but its bytes are not fsynced: after a
power cut it may be missing, empty or hold garbage, which :func:`decode_tree` rejects (length
and a checksum bound to the chunk id), and a chunk without a sound cache gets it back on its
next audit or scrub. Not syncing the cache saves one of the three fsyncs per chunk.

The cache only saves hashing a whole chunk to answer an audit: the segments of an answer are
always read from the chunk file and checked against the cached leaves, so a node that lost or
damaged a chunk cannot prove it from the cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node import fsutil
from node.storage_agent import _blake2b, merkle
from node.storage_agent.contracts import MAX_CHUNK
from node.storage_agent.errors import ChunkCorrupt, ChunkMissing, StorageError, StoreFull

VERIFY_FILE = "storage-id"
CHUNKS = "chunks"
TMP = ".tmp"
CONTRACTS = "contracts"
VOUCHERS = "vouchers"
FILES = "files"
ID_LEN = 32
READ_PIECE = 128 * 1024
_WRITER = ThreadPoolExecutor(8, thread_name_prefix="chunk-write")
"""Syncs and hashes chunks beside the uploading thread (two tasks per upload)."""


class DiskProblem(StorageError):
    """The data disk is missing, swapped or unwritable."""


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE2b-256 of a chunk's bytes: its id (hashed by libsodium, without the GIL)."""
    return _blake2b.digest(data)


ChunkHasher = _blake2b.Hasher
""":func:`chunk_id` of bytes that arrive in pieces."""


def parse_id(text: str) -> bytes:
    """A chunk or contract id from its 64-hex-digit form; ValueError otherwise."""
    if len(text) != 2 * ID_LEN or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"an id is {2 * ID_LEN} lowercase hex digits, got {text[:80]!r}")
    return bytes.fromhex(text)


def write_durable(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp + fsync + rename + dir fsync).

    ``tmp_dir`` lives on the data disk: when it is missing the disk is gone, and nothing is
    written (least of all into the empty mount point it leaves behind).
    """
    write_group([(path, data)], tmp_dir)


def write_group(items: list[tuple[Path, bytes]], tmp_dir: Path) -> None:
    """Several files of one directory, durable together (see :func:`fsutil.write_group`)."""
    if not tmp_dir.is_dir():
        raise DiskProblem(f"{tmp_dir} is missing (data disk unplugged or not mounted?)")
    fsutil.write_group(items, tmp_dir=tmp_dir)


def append_durable(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync it (creating the file, not its directory)."""
    if not path.parent.is_dir():
        raise DiskProblem(f"{path.parent} is missing (data disk unplugged or not mounted?)")
    fsutil.append(path, data)


# -- the Merkle tree cache ----------------------------------------------------------------

TREE_SUFFIX = ".tree"
_TREE_MAGIC = b"bctree1\0"
_TREE_HEAD = struct.Struct(">8sIQI")
_TREE_SUM = 32


def encode_tree(cid: bytes, size: int, leaves: list[bytes]) -> bytes:
    """The cache file of a chunk's leaf hashes, bound to the chunk's id by a checksum."""
    body = _TREE_HEAD.pack(_TREE_MAGIC, merkle.SEGMENT_SIZE, size, len(leaves)) + b"".join(leaves)
    return body + hashlib.blake2b(cid + body, digest_size=_TREE_SUM).digest()


def decode_tree(cid: bytes, size: int, raw: bytes) -> list[bytes]:
    """Leaf hashes from a cache file of chunk ``cid`` of ``size`` bytes; ValueError if damaged."""
    head = _TREE_HEAD.size
    if len(raw) < head + _TREE_SUM:
        raise ValueError(f"tree cache of {len(raw)} bytes is too short")
    magic, seg, cached_size, count = _TREE_HEAD.unpack_from(raw)
    if magic != _TREE_MAGIC or seg != merkle.SEGMENT_SIZE:
        raise ValueError("tree cache has an unknown format")
    if cached_size != size or count != merkle.segment_count(size):
        raise ValueError(f"tree cache is for {cached_size} bytes, the chunk has {size}")
    if len(raw) != head + count * merkle.HASH_LEN + _TREE_SUM:
        raise ValueError("tree cache has the wrong length")
    body, digest = raw[:-_TREE_SUM], raw[-_TREE_SUM:]
    if not hmac.compare_digest(hashlib.blake2b(cid + body, digest_size=_TREE_SUM).digest(), digest):
        raise ValueError("tree cache checksum mismatch")
    return [
        raw[head + i * merkle.HASH_LEN : head + (i + 1) * merkle.HASH_LEN] for i in range(count)
    ]


def _read_ahead(fd: int) -> None:
    """Tell the kernel the file is read front to back (a larger read-ahead window). Asking
    for the whole file up front (``POSIX_FADV_WILLNEED``) measured slower here."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _read_fd(fd: int) -> bytes:
    """The whole file: one buffer of its size, filled by the kernel (no further copies)."""
    size = os.fstat(fd).st_size
    _read_ahead(fd)
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    while piece := os.read(fd, max(size - len(data), READ_PIECE)):
        parts.append(piece)
    return b"".join(parts)


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

    def tree_path(self, cid: bytes) -> Path:
        p = self.path_of(cid)
        return p.with_name(p.name + TREE_SUFFIX)

    def has(self, cid: bytes) -> bool:
        return self.path_of(cid).is_file()

    def put(
        self,
        data: bytes,
        expected: bytes | None = None,
        leaves: list[bytes] | None = None,
        check: Callable[[list[bytes]], None] | None = None,
    ) -> bytes:
        """Store ``data`` and its tree cache durably; returns its id.

        The chunk's temp file is written here, then fsynced and its id computed in helper
        threads while this one computes the Merkle leaves, so the disk and the CPU cores
        work at the same time. ``check`` may reject the chunk by
        its leaves (the temp file is then dropped); ``leaves`` skips computing them when
        the caller has them.
        Idempotent for a chunk already present (its cache is restored if needed).
        """
        if len(data) > MAX_CHUNK:
            raise StorageError(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK}-byte limit")
        if not self.tmp.is_dir():
            raise DiskProblem(f"{self.tmp} is missing (data disk unplugged or not mounted?)")
        hashing = _WRITER.submit(chunk_id, data)
        installed = False
        tmp: Path | None = None
        syncing: Future[Path] | None = None
        tree_tmp: Path | None = None
        try:
            # The copy into the page cache happens here, before the leaves: done beside
            # them in a helper it lost the CPU to them, and the fsync waited for it.
            tmp = fsutil.write_temp(self.tmp, data, sync=False)
            syncing = _WRITER.submit(fsutil.fsync_file, tmp)
            if leaves is None:
                leaves = merkle.leaves(data)
            cid = hashing.result()
            if expected is not None and cid != expected:
                raise ChunkCorrupt(
                    f"chunk bytes hash to {cid.hex()[:16]}…, not {expected.hex()[:16]}…"
                )
            if check is not None:
                check(leaves)
            if self._holds(cid, len(data)):
                if self.load_tree(cid, len(data)) is None:
                    self.save_tree(cid, len(data), leaves)
                return cid
            # Not fsynced (see the module docstring): a damaged cache is noticed and rebuilt.
            tree_tmp = fsutil.write_temp(self.tmp, encode_tree(cid, len(data), leaves), sync=False)
            syncing.result()
            installed = True  # install() removes whatever it could not rename
            fsutil.install([(tmp, self.path_of(cid)), (tree_tmp, self.tree_path(cid))])
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(
                    f"data disk full while writing a chunk of {len(data)} bytes"
                ) from exc
            raise StorageError(f"cannot write a chunk to {self.chunks}: {exc.strerror}") from exc
        finally:
            if not installed:
                with contextlib.suppress(Exception):
                    hashing.result()
                if syncing is not None:
                    with contextlib.suppress(Exception):
                        syncing.result()
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                if tree_tmp is not None:
                    with contextlib.suppress(OSError):
                        tree_tmp.unlink()
        return cid

    def _holds(self, cid: bytes, size: int) -> bool:
        """Whether the chunk is already stored, whole and sound."""
        try:
            return self.size_of(cid) == size and chunk_id(self.read(cid)) == cid
        except StorageError:
            return False

    def _open(self, cid: bytes) -> int:
        try:
            return os.open(self.path_of(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid.hex()[:16]}… is not stored here") from None
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc

    def read(self, cid: bytes) -> bytes:
        fd = self._open(cid)
        try:
            return _read_fd(fd)
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def read_verified(self, cid: bytes) -> bytes:
        data = self.read(cid)
        if chunk_id(data) != cid:
            raise ChunkCorrupt(f"chunk {cid.hex()[:16]}… is damaged (hash mismatch)")
        return data

    def stream(self, cid: bytes) -> Iterator[memoryview]:
        """The chunk in pieces of :data:`READ_PIECE` bytes, read into one small reused buffer.

        For reading that does not need the whole chunk at once (scrub, index rebuild): the
        kernel reads ahead while a piece is handled, and the pieces stay in the CPU cache
        (copying 4 MiB into a fresh buffer costs more than the disk on a fast one). A yielded
        view is valid until the next one is taken.
        """
        fd = self._open(cid)
        try:
            _read_ahead(fd)
            buf = bytearray(READ_PIECE)
            view = memoryview(buf)
            while n := os.readv(fd, [buf]):
                yield view[:n]
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def verify(self, cid: bytes, *, leaves: bool = False) -> tuple[bool, int, list[bytes] | None]:
        """``(sound, size, leaf hashes)`` of a stored chunk, streamed: sound when its bytes
        hash to ``cid``; the leaf hashes are computed on the way when ``leaves`` is set."""
        h = ChunkHasher()
        out: list[bytes] | None = [] if leaves else None
        carry = b""
        size = 0
        for piece in self.stream(cid):
            h.update(piece)
            size += len(piece)
            if out is not None:
                data = carry + piece if carry else piece
                whole = len(data) - len(data) % merkle.SEGMENT_SIZE
                out += merkle.leaves(data[:whole]) if whole else []
                carry = bytes(data[whole:])
        if out is not None and (carry or not out):
            out.append(merkle.leaf_hash(carry))
        return h.digest() == cid, size, out

    def size_of(self, cid: bytes) -> int:
        try:
            return self.path_of(cid).stat().st_size
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid.hex()[:16]}… is not stored here") from None
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc

    def read_segments(self, cid: bytes, indexes: Sequence[int]) -> tuple[int, dict[int, bytes]]:
        """``(chunk size, {index: segment bytes})`` read straight from the chunk file."""
        fd = self._open(cid)
        try:
            size = os.fstat(fd).st_size
            out = {}
            for i in indexes:
                want = max(0, min(merkle.SEGMENT_SIZE, size - i * merkle.SEGMENT_SIZE))
                seg = os.pread(fd, want, i * merkle.SEGMENT_SIZE) if want else b""
                if len(seg) != want:
                    raise ChunkCorrupt(f"chunk {cid.hex()[:16]}… shrank while being read")
                out[i] = seg
            return size, out
        except OSError as exc:
            raise StorageError(f"cannot read chunk {cid.hex()[:16]}…: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def load_tree(self, cid: bytes, size: int) -> list[bytes] | None:
        """The cached leaf hashes of chunk ``cid`` of ``size`` bytes; None if missing or bad."""
        try:
            raw = self.tree_path(cid).read_bytes()
            return decode_tree(cid, size, raw)
        except (OSError, ValueError):
            return None

    def save_tree(self, cid: bytes, size: int, leaves: list[bytes]) -> None:
        """Replace the tree cache, without any fsync: it is checked whenever it is read."""
        if not self.tmp.is_dir():
            raise DiskProblem(f"{self.tmp} is missing (data disk unplugged or not mounted?)")
        tmp = fsutil.write_temp(self.tmp, encode_tree(cid, size, leaves), sync=False)
        fsutil.install([(tmp, self.tree_path(cid))], sync=False)

    def delete(self, cid: bytes) -> None:
        for path in (self.path_of(cid), self.tree_path(cid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def scan(self, strays: list[Path] | None = None) -> Iterator[tuple[bytes, int]]:
        """Every chunk file (id, size); other files are skipped.

        Tree caches whose chunk is gone are added to ``strays`` when it is given.
        """
        if not self.chunks.exists():
            return
        for a in sorted(self.chunks.iterdir()):
            if len(a.name) != 2 or not a.is_dir():
                continue
            for b in sorted(a.iterdir()):
                if not b.is_dir():
                    continue
                names = set(os.listdir(b))
                for name in names:
                    if name.endswith(TREE_SUFFIX):
                        if strays is not None and name[: -len(TREE_SUFFIX)] not in names:
                            strays.append(b / name)
                        continue
                    try:
                        cid = parse_id(name)
                    except ValueError:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        yield cid, (b / name).stat().st_size

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
