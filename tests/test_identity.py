from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult_base

from node import identity
from node.errors import IdentityError


def test_node_id_is_blake2b_of_public_key() -> None:
    ident = identity.Identity.from_seed(bytes(range(32)))
    assert ident.node_id == hashlib.blake2b(ident.public_key, digest_size=32).digest()
    assert identity.decode_id(ident.node_id_text) == ident.node_id
    assert len(ident.node_id_text) == 52 and ident.node_id_text == ident.node_id_text.lower()


def test_x25519_key_matches_ed25519_public_key() -> None:
    ident = identity.Identity.generate()
    derived_pub = crypto_scalarmult_base(bytes(ident.x25519_private))
    assert derived_pub == bytes(ident.x25519_public)
    assert identity.verify_key_to_x25519(ident.public_key) == derived_pub


def test_sign_and_verify() -> None:
    ident = identity.Identity.generate()
    sig = ident.sign(b"hello")
    assert identity.verify(ident.public_key, b"hello", sig)
    assert not identity.verify(ident.public_key, b"hellO", sig)
    assert not identity.verify(b"short", b"hello", sig)


def test_save_load_round_trip(tmp_path: Path) -> None:
    ident = identity.Identity.generate()
    path = tmp_path / "identity.key"
    identity.save(ident, path)
    assert identity.load(path).node_id == ident.node_id
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        identity.save(identity.Identity.generate(), path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "bad header"),
        (b"bitchat-node identity v1\n!!!\n", "bad base64"),
        (b"bitchat-node identity v1\nAAAA\n", "seed of 3 bytes"),
    ],
)
def test_corrupt_key_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match=message):
        identity.load(path)


@given(st.text(max_size=60))
def test_decode_id_rejects_or_round_trips(text: str) -> None:
    try:
        raw = identity.decode_id(text)
    except ValueError:
        return
    assert len(raw) == 32
