# HMAC-SHA256 (RFC 2104) over hashlib.sha256: MicroPython has no hmac module.
import hashlib

_BLOCK = 64


class Hmac:
    """Keyed HMAC-SHA256; pads are computed once per key."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        k = bytearray(_BLOCK)
        k[: len(key)] = key
        self._ipad = bytes(b ^ 0x36 for b in k)
        self._opad = bytes(b ^ 0x5C for b in k)

    def digest(self, *parts):
        h = hashlib.sha256(self._ipad)
        for p in parts:
            h.update(p)
        o = hashlib.sha256(self._opad)
        o.update(h.digest())
        return o.digest()


def hmac_sha256(key, *parts):
    return Hmac(key).digest(*parts)


def equal(a, b):
    """Constant-time comparison of two byte strings."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0
