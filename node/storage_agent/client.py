"""The client's side of a file: encryption, erasure coding and file ids (no I/O).

A file is encrypted on the client in blocks of :data:`BLOCK` bytes with XChaCha20-Poly1305
(a random nonce per block; the block number and a last-block flag are authenticated, so blocks
cannot be reordered, dropped or truncated unnoticed). The agent never sees the key: it cuts the
ciphertext into stripes, erasure-codes each stripe into ``n`` shares of which any ``k``
rebuild it (zfec), and places the shares. The file id is the id of the placement record
followed by the key; only the record id is ever sent to an agent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zfec
from nacl import bindings
from nacl.exceptions import CryptoError

from node.storage_agent.errors import ProofError, StorageError

BLOCK = 1024 * 1024
NONCE = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
CT_BLOCK = NONCE + BLOCK + TAG
KEY_LEN = 32
SHARE_SIZE = 1024 * 1024
"""Largest share: a stripe is ``k`` shares of ciphertext."""
_AAD = b"bitchat-file-v1"
MAX_RECORD = 1024 * 1024


def _aad(index: int, last: bool) -> bytes:
    return _AAD + struct.pack(">QB", index, int(last))


def new_key() -> bytes:
    return os.urandom(KEY_LEN)


def encrypt_blocks(key: bytes, blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Ciphertext of a plaintext given as blocks of exactly :data:`BLOCK` bytes (last shorter)."""
    index = 0
    pending: bytes | None = None
    for block in blocks:
        if pending is not None:
            yield _seal(key, index, pending, last=False)
            index += 1
        pending = block
    yield _seal(key, index, pending or b"", last=True)


def _seal(key: bytes, index: int, block: bytes, *, last: bool) -> bytes:
    nonce = os.urandom(NONCE)
    ct: bytes = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        block, _aad(index, last), nonce, key
    )
    return nonce + ct


class Decryptor:
    """Turns ciphertext, fed in any pieces, back into plaintext; checks it is complete."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        # Keep one full block back: only the end of the stream tells which block is last.
        while len(self._buf) > CT_BLOCK:
            out.append(self._open(bytes(self._buf[:CT_BLOCK]), last=False))
            del self._buf[:CT_BLOCK]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            raise StorageError("decryptor already finished")
        if len(self._buf) < NONCE + TAG:
            raise ProofError("file is truncated (missing its last block)")
        self._done = True
        return self._open(bytes(self._buf), last=True)

    def _open(self, block: bytes, *, last: bool) -> bytes:
        try:
            plain: bytes = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                block[NONCE:], _aad(self._index, last), block[:NONCE], self.key
            )
        except CryptoError:
            raise ProofError(
                f"block {self._index} of the file failed authentication "
                "(wrong file id, or damaged data)"
            ) from None
        self._index += 1
        return plain


def ciphertext_size(plain_size: int) -> int:
    blocks = max(1, -(-plain_size // BLOCK))
    return plain_size + blocks * (NONCE + TAG)


# -- file ids ---------------------------------------------------------------------------


def format_file_id(record_id: bytes, key: bytes) -> str:
    return base64.b32encode(record_id + key).decode().rstrip("=").lower()


def parse_file_id(text: str) -> tuple[bytes, bytes]:
    """(record id, key) from a file id; ValueError with a reason otherwise."""
    clean = text.strip().upper()
    if len(clean) != 103:
        raise ValueError(f"a file id is 103 base32 characters, got {len(clean)}")
    try:
        raw = base64.b32decode(clean + "=" * 1)
    except ValueError:
        raise ValueError("a file id is base32 (letters a-z and digits 2-7)") from None
    return raw[:32], raw[32:]


# -- erasure coding ---------------------------------------------------------------------


def encode_stripe(data: bytes, k: int, n: int) -> list[bytes]:
    """``n`` shares of ``data``; any ``k`` of them rebuild it (see :func:`decode_stripe`)."""
    share = max(1, -(-len(data) // k))
    padded = data.ljust(share * k, b"\0")
    blocks = [padded[i * share : (i + 1) * share] for i in range(k)]
    return [bytes(b) for b in zfec.Encoder(k, n).encode(blocks)]


def decode_stripe(shares: dict[int, bytes], k: int, n: int, size: int) -> bytes:
    """The stripe of ``size`` bytes from any ``k`` shares keyed by share number."""
    if len(shares) < k:
        raise StorageError(f"only {len(shares)} of the {k} shares needed are available")
    nums = sorted(shares)[:k]
    lengths = {len(shares[i]) for i in nums}
    if len(lengths) != 1:
        raise StorageError("shares of one stripe differ in length")
    primary = zfec.Decoder(k, n).decode([shares[i] for i in nums], nums)
    return b"".join(bytes(b) for b in primary)[:size]


@dataclass(frozen=True)
class FileRecord:
    """What identifies a stored file's ciphertext: sizes, coding and share ids (no places)."""

    size: int
    k: int
    n: int
    stripes: tuple[tuple[int, tuple[bytes, ...]], ...]
    """(stripe size, share ids) per stripe."""

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "size": self.size,
            "k": self.k,
            "n": self.n,
            "stripes": [[s, [c.hex() for c in ids]] for s, ids in self.stripes],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @property
    def id(self) -> bytes:
        return hashlib.blake2b(self.encode(), digest_size=32).digest()

    @classmethod
    def decode(cls, data: bytes) -> FileRecord:
        if len(data) > MAX_RECORD:
            raise StorageError("file record is too large")
        try:
            doc: Any = json.loads(data)
            if doc.get("v") != 1:
                raise ValueError("unknown version")
            k, n, size = int(doc["k"]), int(doc["n"]), int(doc["size"])
            if not (1 <= k <= n <= 256) or size < 0:
                raise ValueError("bad k, n or size")
            stripes = []
            for s, ids in doc["stripes"]:
                if len(ids) != n or not 0 <= int(s) <= k * SHARE_SIZE:
                    raise ValueError("bad stripe")
                stripes.append((int(s), tuple(bytes.fromhex(c) for c in ids)))
            if sum(s for s, _ in stripes) != size or any(
                len(c) != 32 for _, i in stripes for c in i
            ):
                raise ValueError("stripes do not add up")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StorageError(f"file record is malformed: {exc}") from None
        return cls(size, k, n, tuple(stripes))
