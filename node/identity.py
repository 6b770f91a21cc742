"""Ed25519 identity of a node.

The node id is BLAKE2b-256 of the Ed25519 public key, shown as lowercase base32 without padding.
The X25519 static key used by Noise sessions is derived from the same Ed25519 key pair, so one
file (``identity.key``, mode 0600) is the whole identity.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from node import fsutil
from node.errors import IdentityError

KEY_FILE = "identity.key"
_HEADER = b"bitchat-node identity v1\n"
NODE_ID_LEN = 32


def node_id_of(public_key: bytes) -> bytes:
    """Node id of an Ed25519 public key: BLAKE2b-256 of its 32 bytes."""
    return hashlib.blake2b(public_key, digest_size=NODE_ID_LEN).digest()


def encode_id(node_id: bytes) -> str:
    """Lowercase unpadded base32 form of a node id (52 characters)."""
    return base64.b32encode(node_id).decode().rstrip("=").lower()


def decode_id(text: str) -> bytes:
    """Parse the base32 form of a node id; raises ValueError on anything else."""
    clean = text.strip().upper()
    if len(clean) != 52:
        raise ValueError(f"a node id is 52 base32 characters, got {len(clean)}")
    try:
        raw = base64.b32decode(clean + "====")
    except Exception as exc:
        raise ValueError(f"not base32: {text!r}") from exc
    return raw


def verify_key_to_x25519(public_key: bytes) -> bytes:
    """X25519 public key corresponding to an Ed25519 public key."""
    return bytes(VerifyKey(public_key).to_curve25519_public_key())


@dataclass(frozen=True, slots=True)
class Identity:
    """A node's key pair and the values derived from it."""

    signing_key: SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)

    @property
    def node_id_text(self) -> str:
        return encode_id(self.node_id)

    @property
    def x25519_private(self) -> PrivateKey:
        """Static Noise key derived from the Ed25519 key."""
        return self.signing_key.to_curve25519_private_key()

    @property
    def x25519_public(self) -> PublicKey:
        return self.x25519_private.public_key

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature of ``message``."""
        return self.signing_key.sign(message).signature


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    from nacl.exceptions import BadSignatureError

    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def save(identity: Identity, path: Path) -> None:
    """Write the key file with mode 0600, refusing to overwrite an existing one."""
    data = _HEADER + base64.b64encode(bytes(identity.signing_key)) + b"\n"
    try:
        fsutil.write(path, data, mode=0o600, exclusive=True)
    except FileExistsError as exc:
        raise IdentityError(f"{path} already exists; refusing to overwrite an identity") from exc


def load(path: Path, *, check_mode: bool = True) -> Identity:
    """Read the key file; refuses a file that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no identity at {path}; run `bitchat-node init --data-dir {path.parent}` first"
        ) from exc
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with `chmod 600 {path}`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from exc
    if not data.startswith(_HEADER):
        raise IdentityError(f"{path} is not a bitchat-node identity file (bad header)")
    try:
        seed = base64.b64decode(data[len(_HEADER) :].strip(), validate=True)
    except ValueError as exc:
        raise IdentityError(f"{path} is corrupt (bad base64)") from exc
    if len(seed) != 32:
        raise IdentityError(f"{path} is corrupt (seed of {len(seed)} bytes, expected 32)")
    return Identity.from_seed(seed)
