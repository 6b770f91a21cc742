"""Property tests for every parser of outside input in the relay code: config JSON, enrollment
tokens, provisioning requests, BLE chunks, BLE status, bundle manifests, setup codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from brelay import cfg, chunk, prov
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.relays.http import bridge_request
from provisioning.errors import FleetError
from provisioning.relay import bundle, enroll, sealing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=12,
)
config_keys = st.sampled_from(["relay_id", "key", "home", "ssid", "psk", "port_base", "epoch",
                               "log", "setup", "setup_shown", "other"])  # fmt: skip


@settings(deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_config_text_is_parsed_or_refused_clearly(text: str) -> None:
    try:
        out = cfg.parse(text)
    except cfg.ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(out, dict) and "raw" in out


@settings(deadline=None, max_examples=60)
@given(st.dictionaries(config_keys, json_values, max_size=8))
def test_config_objects_are_validated(doc: dict[str, Any]) -> None:
    try:
        out = cfg.parse(json.dumps(doc))
    except cfg.ConfigError:
        return
    if "relay_id" in out:
        assert len(out["relay_id"]) == 8 and len(out["key"]) == 32
        assert 0 < out["home"][1] < 65536
    assert 1024 <= out["port_base"] <= 65000


def test_valid_config_round_trips(tmp_path: Path) -> None:
    raw = {"relay_id": "ab" * 8, "key": "cd" * 32, "home": "[::1]:7701", "port_base": 9000}
    path = str(tmp_path / "relay.json")
    cfg.save(raw, path)
    out = cfg.load(path)
    assert out["home"] == ("[::1]", 7701) and out["port_base"] == 9000


@settings(deadline=None)
@given(st.text(max_size=200))
def test_tokens(text: str) -> None:
    try:
        rid, key, _home = cfg.parse_token(text)
    except cfg.ConfigError:
        return
    assert len(rid) == 8 and len(key) == 32 and text.startswith("BR1:")


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_provisioning_junk_never_configures(data: bytes) -> None:
    p = prov.Provisioner("ABCDEFGHJKLMNPQR", 0, True)
    assert p.request(data, 1) is None
    assert p.result in (prov.ERR_AUTH, prov.ERR_FORMAT)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["ssid", "psk", "token", "x"]), json_values, max_size=4))
def test_sealed_requests_with_any_content_are_checked(doc: dict[str, Any]) -> None:
    p = prov.Provisioner("ABCDEFGHJKLMNPQR", 0, True)
    sealed = sealing.seal("ABCDEFGHJKLMNPQR", p.nonce, json.dumps(doc).encode())
    fields = p.request(sealed, 1)
    if fields is None:
        assert p.result == prov.ERR_FORMAT
    else:
        assert 0 < len(fields["ssid"]) <= 32 and len(fields["key"]) == 32


def test_a_request_cannot_be_replayed() -> None:
    p = prov.Provisioner("ABCDEFGHJKLMNPQR", 0, True)
    token = f"BR1:{'0a' * 8}:{'1b' * 32}:box:7701"
    sealed = sealing.seal("ABCDEFGHJKLMNPQR", p.nonce, sealing.request("home", "", token))
    assert p.request(sealed, 1) is not None
    p.press(2)
    assert p.request(sealed, 3) is None and p.result == prov.ERR_AUTH


@settings(deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=40))
def test_joiner_survives_any_chunks(parts: list[bytes]) -> None:
    j = chunk.Joiner(200)
    for part in parts:
        out = j.feed(part)
        assert out is None or len(out) <= 200


@settings(deadline=None)
@given(st.binary(max_size=2000), st.integers(5, 300))
def test_chunks_round_trip(frame: bytes, mtu: int) -> None:
    try:
        parts = list(chunk.chunks(frame, mtu))
    except ValueError:
        assert len(frame) > 128 * (mtu - 4)
        return
    assert parts == sealing.chunks(frame, mtu)
    j = chunk.Joiner(2000)
    outs = [j.feed(p) for p in parts]
    assert outs[:-1] == [None] * (len(parts) - 1)
    assert bytes(outs[-1]) == frame  # type: ignore[arg-type]


@settings(deadline=None)
@given(st.binary(max_size=20))
def test_ble_status(data: bytes) -> None:
    try:
        _state, nonce, _result = enroll.parse_status(data)
    except FleetError:
        assert len(data) != 10
        return
    assert len(nonce) == 8


@settings(deadline=None)
@given(st.text(max_size=30))
def test_setup_codes(text: str) -> None:
    try:
        code = sealing.normalise_code(text)
    except FleetError:
        with pytest.raises(ValueError):
            prov.normalise_code(text)
        return
    assert prov.normalise_code(text) == code


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_values)
def test_manifests(tmp_path: Path, doc: Any) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    try:
        b = bundle.load(tmp_path)
    except bundle.BundleError:
        return
    assert all(not f.path.startswith("/") for f in b.files)


@settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200
)
@given(st.binary(max_size=80), st.binary(max_size=200))
def test_relay_manager_ignores_junk_datagrams(tmp_path: Path, head: bytes, tail: bytes) -> None:
    from node import state
    from node.relays.manager import RelayManager
    from node.relays.store import RelayStore

    db = state.open_state(tmp_path / "state.db")
    try:
        store = RelayStore(db)
        rec = store.all()[0] if store.all() else store.issue("fuzz")
        mgr = RelayManager(store)
        for data in (head + tail, b"BR\x01\x01" + rec.relay_id + head + tail):
            assert mgr.receive(data, ("192.0.2.1", 7), 1.0) == []
        assert mgr.sessions == {} and mgr.rejected == 2
    finally:
        db.conn.close()


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["relay_id", "data", "x"]), inner,
                                      max_size=3), max_leaves=8))  # fmt: skip
def test_bridge_request_body(body: object) -> None:
    try:
        relay_id, payload = bridge_request(body)
    except ValueError:
        return
    assert len(bytes.fromhex(relay_id)) == 8 and 0 < len(payload) <= 1200


@given(st.binary(min_size=0, max_size=1300), st.binary(min_size=8, max_size=8))
def test_bridge_request_round_trip(payload: bytes, rid: bytes) -> None:
    body = {"relay_id": rid.hex().upper(), "data": base64.b64encode(payload).decode()}
    if 0 < len(payload) <= 1200:
        assert bridge_request(body) == (rid.hex(), payload)
    else:
        with pytest.raises(ValueError, match="1-1200 bytes"):
            bridge_request(body)
