"""Sealed provisioning requests, host side (the firmware's ``brelay/prov.py`` opens them).

Keys come from the board's setup code: ``prk = HMAC(b"bitchat-relay-prov-v1", code)``,
``enc = HMAC(prk, b"enc")``, ``mac = HMAC(prk, b"mac")``. A request is ``nonce_c | ct | tag``:
``ct`` is the plaintext XOR ``HMAC(enc, nonce_d|nonce_c|i)`` blocks, ``tag`` is
``HMAC(mac, nonce_d|nonce_c|ct)[:16]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from provisioning.errors import FleetError

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
NONCE = 8
TAG = 16


def normalise_code(code: str) -> str:
    clean = code.replace("-", "").replace(" ", "").upper()
    if len(clean) != 16 or any(c not in ALPHABET for c in clean):
        raise FleetError(
            "the setup code is 16 letters and digits, as printed on the relay's label "
            "and shown on its serial console at first boot"
        )
    return clean


def _h(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def derive(code: str) -> tuple[bytes, bytes]:
    prk = _h(b"bitchat-relay-prov-v1", normalise_code(code).encode())
    return _h(prk, b"enc"), _h(prk, b"mac")


def seal(code: str, nonce_d: bytes, plain: bytes, nonce_c: bytes | None = None) -> bytes:
    enc, mac = derive(code)
    nc = nonce_c if nonce_c is not None else secrets.token_bytes(NONCE)
    out = bytearray(plain)
    for i in range(0, len(out), 32):
        block = _h(enc, nonce_d, nc, i.to_bytes(4, "big"))
        for j in range(min(32, len(out) - i)):
            out[i + j] ^= block[j]
    ct = bytes(out)
    return nc + ct + _h(mac, nonce_d, nc, ct)[:TAG]


def request(ssid: str, psk: str, token: str) -> bytes:
    return json.dumps({"ssid": ssid, "psk": psk, "token": token}).encode()


def chunks(frame: bytes, mtu: int) -> list[bytes]:
    """Split for the board's chunk format (firmware brelay/chunk.py)."""
    room = mtu - 4
    if room < 1:
        raise FleetError(f"BLE MTU {mtu} is too small")
    count = max(1, -(-len(frame) // room))
    if count > 128:
        raise FleetError("provisioning request too long for this BLE MTU")
    return [
        bytes([(0x80 if i < count - 1 else 0) | i]) + frame[i * room : (i + 1) * room]
        for i in range(count)
    ]
