"""BLAKE2b-256 through libsodium (PyNaCl's bindings): chunk ids and Merkle leaves.

libsodium's BLAKE2b is vectorised (about 1.4x hashlib's rate here) and its calls run
without the GIL, so hashing spreads over the cores. Digests are those of
``hashlib.blake2b(digest_size=32)``.
"""

from __future__ import annotations

from typing import Any

from nacl._sodium import ffi as _ffi  # type: ignore[import-not-found]
from nacl._sodium import lib as _lib

DIGEST_LEN = 32
_STATE_BYTES = _lib.crypto_generichash_statebytes()
_NULL = _ffi.NULL
_update = _lib.crypto_generichash_blake2b_update
_final = _lib.crypto_generichash_blake2b_final
_memmove = _ffi.memmove


def _state_memory() -> tuple[Any, Any]:
    """Room for one state as ``(owner, state)``; keep ``owner`` alive while it is used.

    libsodium declares its state 64-byte aligned; cffi's allocations are not.
    """
    keep = _ffi.new("unsigned char[]", _STATE_BYTES + 64)
    return keep, keep + (-int(_ffi.cast("uintptr_t", keep)) % 64)


def new_state() -> tuple[Any, Any]:
    """A fresh hashing state as ``(owner, state)``; keep ``owner`` alive while it is used."""
    keep, state = _state_memory()
    _lib.crypto_generichash_blake2b_init_salt_personal(state, _NULL, 0, DIGEST_LEN, _NULL, _NULL)
    return keep, state


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE2b-256 of ``data``."""
    out = _ffi.new("unsigned char[]", DIGEST_LEN)
    buf = _ffi.from_buffer(data)
    _lib.crypto_generichash_blake2b_salt_personal(
        out, DIGEST_LEN, buf, len(buf), _NULL, 0, _NULL, _NULL
    )
    return bytes(_ffi.buffer(out, DIGEST_LEN))


class Hasher:
    """:func:`digest` of bytes that arrive in pieces."""

    __slots__ = ("_keep", "_state")

    def __init__(self) -> None:
        self._keep, self._state = new_state()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        buf = _ffi.from_buffer(data)
        _update(self._state, buf, len(buf))

    def digest(self) -> bytes:
        out = _ffi.new("unsigned char[]", DIGEST_LEN)
        _final(self._state, out, DIGEST_LEN)
        return bytes(_ffi.buffer(out, DIGEST_LEN))


_PREFIXED: dict[bytes, tuple[Any, Any]] = {}


def digests_of_pieces(
    data: bytes | bytearray | memoryview, piece: int, prefix: bytes = b""
) -> list[bytes]:
    """``digest(prefix + p)`` of each consecutive ``piece``-byte slice ``p`` of ``data`` (the
    last may be shorter; empty ``data`` is one empty piece), hashed in place."""
    if prefix not in _PREFIXED:
        keep, start = new_state()
        _update(start, prefix, len(prefix))
        _PREFIXED[prefix] = (keep, start)
    start = _PREFIXED[prefix][1]
    buf = _ffi.from_buffer(data)
    size = len(buf)
    count = max(1, -(-size // piece))
    _keep, state = _state_memory()  # each piece starts from a copy of ``start``
    out = _ffi.new("unsigned char[]", DIGEST_LEN * count)
    offset = 0
    for i in range(count):
        _memmove(state, start, _STATE_BYTES)
        _update(state, buf + offset, min(piece, size - offset))
        _final(state, out + DIGEST_LEN * i, DIGEST_LEN)
        offset += piece
    raw = _ffi.buffer(out)[:]
    return [raw[i : i + DIGEST_LEN] for i in range(0, len(raw), DIGEST_LEN)]
