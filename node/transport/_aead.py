"""ChaCha20-Poly1305 (IETF) straight through libsodium's C functions.

PyNaCl's ``nacl.bindings`` wrappers check every argument and allocate two cffi objects per
call; per packet that doubles the cost of the cipher itself. These two functions call the same
libsodium entry points with one reused output buffer (the transport runs on one thread).
"""

from __future__ import annotations

from nacl._sodium import ffi, lib  # type: ignore[import-not-found]
from nacl.exceptions import CryptoError

TAG_LEN = 16
KEY_LEN = 32
NONCE_LEN = 12
MAX_MESSAGE = 65536

_out = ffi.new("unsigned char[]", MAX_MESSAGE + TAG_LEN)
_outlen = ffi.new("unsigned long long *")
_encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt
_buffer = ffi.buffer
_NULL = ffi.NULL


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Ciphertext and tag of ``plaintext``; ``aad`` is authenticated, not encrypted."""
    n = len(plaintext)
    if n > MAX_MESSAGE or len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("bad AEAD arguments")
    _encrypt(_out, _outlen, plaintext, n, aad, len(aad), _NULL, nonce, key)
    out: bytes = _buffer(_out, n + TAG_LEN)[:]
    return out


def open_(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Plaintext of ``ciphertext``; raises CryptoError when it does not authenticate."""
    n = len(ciphertext)
    if n < TAG_LEN or n > MAX_MESSAGE + TAG_LEN or len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise CryptoError("bad AEAD input")
    if _decrypt(_out, _outlen, _NULL, ciphertext, n, aad, len(aad), nonce, key) != 0:
        raise CryptoError("packet failed authentication")
    out: bytes = _buffer(_out, n - TAG_LEN)[:]
    return out
