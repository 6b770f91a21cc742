# BLE provisioning: Wi-Fi credentials and the enrollment token, sealed under the setup code.
#
# The board's setup code (16 base32 characters, 80 bits) is printed once on its serial console
# and on its label. Both sides derive an encryption key and a MAC key from it. The board
# publishes a fresh 8-byte nonce in its status; the central sends
#   nonce_c (8) | ciphertext | tag (16)
# where the ciphertext is the JSON request XORed with HMAC-SHA256(enc, nonce_d|nonce_c|i)
# blocks and the tag is HMAC-SHA256(mac, nonce_d|nonce_c|ciphertext) truncated to 16 bytes.
# Nothing travels in plaintext even without LE Secure Connections; each nonce is used once;
# writes are accepted only in pairing mode (first boot or a button press), for a limited time,
# and a few bad tags end pairing mode.
import json

from brelay import cfg, rand, ticks
from brelay.hmac import Hmac, equal, hmac_sha256
from micropython import const

_NONCE = const(8)
_TAG = const(16)
PAIR_MS = const(300000)
_MAX_BAD = const(5)
MAX_REQUEST = const(512)

# Status: state byte, nonce (8), result byte.
IDLE = const(0)
PAIRING = const(1)
DONE = const(2)
LOCKED = const(3)
OK = const(0)
ERR_NOT_PAIRING = const(1)
ERR_AUTH = const(2)
ERR_FORMAT = const(3)

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class AuthError(ValueError):
    pass


def new_setup_code():
    r = rand.urandom(16)
    return "".join(ALPHABET[b & 31] for b in r)


def normalise_code(code):
    code = code.replace("-", "").replace(" ", "").upper()
    if len(code) != 16 or any(c not in ALPHABET for c in code):
        raise ValueError("setup code must be 16 characters of " + ALPHABET)
    return code


def derive(code):
    """(encryption key, MAC key) from a setup code."""
    prk = hmac_sha256(b"bitchat-relay-prov-v1", normalise_code(code).encode())
    return hmac_sha256(prk, b"enc"), hmac_sha256(prk, b"mac")


def _xor(enc, nonce_d, nonce_c, data):
    out = bytearray(data)
    e = Hmac(enc)
    for i in range(0, len(out), 32):
        block = e.digest(nonce_d, nonce_c, i.to_bytes(4, "big"))
        for j in range(min(32, len(out) - i)):
            out[i + j] ^= block[j]
    return out


def seal(code, nonce_d, nonce_c, plain):
    """What the central writes (used by the enrollment tool and the tests)."""
    enc, mac = derive(code)
    ct = _xor(enc, nonce_d, nonce_c, plain)
    tag = Hmac(mac).digest(nonce_d, nonce_c, ct)[:_TAG]
    return bytes(nonce_c) + bytes(ct) + tag


def unseal(code_keys, nonce_d, msg):
    enc, mac = code_keys
    if len(msg) < _NONCE + _TAG + 1:
        raise ValueError("short request")
    nonce_c = bytes(msg[:_NONCE])
    ct = bytes(msg[_NONCE : len(msg) - _TAG])
    tag = Hmac(mac).digest(nonce_d, nonce_c, ct)[:_TAG]
    if not equal(tag, msg[len(msg) - _TAG :]):
        raise AuthError("bad tag")
    return bytes(_xor(enc, nonce_d, nonce_c, ct))


def parse_request(plain):
    """Validate the decrypted JSON request; returns the config fields it sets."""
    try:
        req = json.loads(plain)
    except (ValueError, UnicodeError):
        raise ValueError("request is not JSON")
    if not isinstance(req, dict):
        raise ValueError("request must be an object")
    out = {}
    ssid = req.get("ssid")
    psk = req.get("psk", "")
    if not isinstance(ssid, str) or not 0 < len(ssid) <= 32:
        raise ValueError("ssid must be 1-32 characters")
    if not isinstance(psk, str) or not (len(psk) == 0 or 8 <= len(psk) <= 63):
        raise ValueError("psk must be empty or 8-63 characters")
    out["ssid"] = ssid
    out["psk"] = psk
    token = req.get("token")
    if not isinstance(token, str):
        raise ValueError("token missing")
    rid, key, home = cfg.parse_token(token)
    out["relay_id"] = rid
    out["key"] = key
    out["home"] = home
    return out


class Provisioner:
    """The provisioning service's state, driven by writes, the button and a clock."""

    def __init__(self, code, now, pairing):
        self.keys = derive(code)
        self.state = IDLE
        self.result = OK
        self.until = 0
        self.bad = 0
        self.nonce = rand.urandom(_NONCE)
        if pairing:
            self.press(now)

    def press(self, now):
        """Button press (or first boot): accept provisioning writes for PAIR_MS."""
        self.state = PAIRING
        self.until = ticks.add(now, PAIR_MS)
        self.bad = 0
        self.nonce = rand.urandom(_NONCE)

    def tick(self, now):
        if self.state == PAIRING and ticks.diff(now, self.until) > 0:
            self.state = IDLE

    def status(self):
        return bytes((self.state,)) + self.nonce + bytes((self.result,))

    def request(self, msg, now):
        """A whole request from the central; returns the config fields to save, or None."""
        self.tick(now)
        if self.state != PAIRING:
            self.result = ERR_NOT_PAIRING
            return None
        if len(msg) > MAX_REQUEST:
            self.result = ERR_FORMAT
            return None
        try:
            plain = unseal(self.keys, self.nonce, msg)
        except ValueError:
            self.bad += 1
            self.result = ERR_AUTH
            if self.bad >= _MAX_BAD:
                self.state = LOCKED
            return None
        # The nonce is spent whatever the request says.
        self.nonce = rand.urandom(_NONCE)
        try:
            fields = parse_request(plain)
        except ValueError:
            self.result = ERR_FORMAT
            return None
        self.state = DONE
        self.result = OK
        return fields
