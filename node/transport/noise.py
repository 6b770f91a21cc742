"""The Noise protocol framework (revision 34), patterns XX and IK, 25519/ChaChaPoly/BLAKE2b.

Sans-I/O: :class:`HandshakeState` takes and returns handshake messages as bytes. The primitives
come from libsodium through ``nacl.bindings`` and from ``hashlib``; names follow the spec
(``MixKey``, ``MixHash``, ``EncryptAndHash``, ``Split``) so the code reads next to it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from nacl import bindings
from nacl.exceptions import CryptoError

from node.transport.errors import HandshakeError

DHLEN = 32
HASHLEN = 64
BLOCKLEN = 128
KEYLEN = 32
TAGLEN = 16
MAX_NONCE = (1 << 64) - 1
MAX_MESSAGE_LEN = 65535

# Message patterns (Noise spec section 7.5); pre-message "<- s" for IK.
_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "XX": (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    "IK": (("e", "es", "s", "ss"), ("e", "ee", "se")),
}

_encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt


def protocol_name(pattern: str) -> bytes:
    return f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2b".encode()


def nonce_bytes(n: int) -> bytes:
    """ChaChaPoly nonce: 32 bits of zeros, then ``n`` as 64-bit little-endian (spec 12.3)."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def x25519_public(private: bytes) -> bytes:
    return bindings.crypto_scalarmult_base(private)


def dh(private: bytes, public: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult(private, public)
    except (CryptoError, RuntimeError, ValueError, TypeError) as exc:
        raise HandshakeError("invalid X25519 public key in handshake") from exc


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise HKDF (spec 4.3) with HMAC-BLAKE2b; 2 or 3 outputs of HASHLEN bytes."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def rekey(key: bytes) -> bytes:
    """REKEY(k) = first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros) (spec 4.2)."""
    return _encrypt(bytes(KEYLEN), b"", nonce_bytes(MAX_NONCE), key)[:KEYLEN]


class CipherState:
    """A key and a counter nonce (spec 5.1)."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise HandshakeError("Noise nonce exhausted")
        out = _encrypt(plaintext, ad, nonce_bytes(self.n), self.k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise HandshakeError("Noise nonce exhausted")
        try:
            out = _decrypt(ciphertext, ad, nonce_bytes(self.n), self.k)
        except (CryptoError, ValueError, TypeError) as exc:
            raise HandshakeError("handshake message failed authentication") from exc
        self.n += 1
        return out


class SymmetricState:
    """Chaining key and handshake hash (spec 5.2)."""

    def __init__(self, name: bytes) -> None:
        self.h = name.ljust(HASHLEN, b"\x00") if len(name) <= HASHLEN else _hash(name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1[:KEYLEN], k2[:KEYLEN]


class HandshakeState:
    """One side of an XX or IK handshake (spec 5.3).

    ``write_message``/``read_message`` alternate as the pattern says; once ``complete`` is
    true, ``keys()`` gives the (send, receive) transport keys of this side.
    """

    def __init__(
        self,
        pattern: str,
        *,
        initiator: bool,
        static_private: bytes,
        prologue: bytes = b"",
        remote_static: bytes | None = None,
        ephemeral_private: bytes | None = None,
    ) -> None:
        if pattern not in _PATTERNS:
            raise ValueError(f"unsupported Noise pattern {pattern}")
        if pattern == "IK" and initiator and remote_static is None:
            raise ValueError("IK needs the responder's static key")
        self.pattern = pattern
        self.initiator = initiator
        self.s = static_private
        self.s_pub = x25519_public(static_private)
        self.e = ephemeral_private
        self.e_pub: bytes | None = None
        self.rs = remote_static
        self.re: bytes | None = None
        self.ss = SymmetricState(protocol_name(pattern))
        self.ss.mix_hash(prologue)
        if pattern == "IK":
            self.ss.mix_hash(self.s_pub if not initiator else remote_static or b"")
        self._messages = _PATTERNS[pattern]
        self._index = 0
        self._keys: tuple[bytes, bytes] | None = None

    @property
    def complete(self) -> bool:
        return self._keys is not None

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    def my_turn(self) -> bool:
        return not self.complete and (self._index % 2 == 0) == self.initiator

    def keys(self) -> tuple[bytes, bytes]:
        """(send key, receive key) after the handshake."""
        if self._keys is None:
            raise HandshakeError("handshake is not complete")
        k1, k2 = self._keys
        return (k1, k2) if self.initiator else (k2, k1)

    def _dh_token(self, token: str) -> bytes:
        # "es": DH(initiator's e, responder's s); "se": DH(initiator's s, responder's e).
        e, s, re, rs = self.e, self.s, self.re, self.rs
        pairs = {
            "ee": (e, re),
            "es": (e, rs) if self.initiator else (s, re),
            "se": (s, re) if self.initiator else (e, rs),
            "ss": (s, rs),
        }
        priv, pub = pairs[token]
        if priv is None or pub is None:
            raise HandshakeError(f"missing key for Noise token {token}")
        return dh(priv, pub)

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._messages):
            self._keys = self.ss.split()

    def write_message(self, payload: bytes = b"") -> bytes:
        if not self.my_turn():
            raise HandshakeError("not this side's turn to write a handshake message")
        out = bytearray()
        for token in self._messages[self._index]:
            if token == "e":
                if self.e is None:
                    self.e = os.urandom(DHLEN)
                self.e_pub = x25519_public(self.e)
                out += self.e_pub
                self.ss.mix_hash(self.e_pub)
            elif token == "s":
                out += self.ss.encrypt_and_hash(self.s_pub)
            else:
                self.ss.mix_key(self._dh_token(token))
        out += self.ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise HandshakeError("handshake message too long")
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self.complete or self.my_turn():
            raise HandshakeError("not expecting a handshake message now")
        message = bytes(message)
        pos = 0
        for token in self._messages[self._index]:
            if token == "e":
                if len(message) < pos + DHLEN:
                    raise HandshakeError("handshake message too short for an ephemeral key")
                self.re = message[pos : pos + DHLEN]
                pos += DHLEN
                self.ss.mix_hash(self.re)
            elif token == "s":
                n = DHLEN + (TAGLEN if self.ss.cipher.k is not None else 0)
                if len(message) < pos + n:
                    raise HandshakeError("handshake message too short for a static key")
                self.rs = self.ss.decrypt_and_hash(message[pos : pos + n])
                pos += n
            else:
                self.ss.mix_key(self._dh_token(token))
        if self.ss.cipher.k is not None and len(message) - pos < TAGLEN:
            raise HandshakeError("handshake message too short for its payload tag")
        payload = self.ss.decrypt_and_hash(message[pos:])
        self._advance()
        return payload
