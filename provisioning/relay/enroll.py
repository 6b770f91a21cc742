"""Enrollment: a key from the home box's relay manager, and BLE provisioning with bleak."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioning.errors import FleetError
from provisioning.relay import sealing

PROV_UUID = "b17c0001-6e6f-6465-8000-00805f9b34fb"
STATUS_UUID = "b17c0002-6e6f-6465-8000-00805f9b34fb"
REQUEST_UUID = "b17c0003-6e6f-6465-8000-00805f9b34fb"
STATE_NAMES = {0: "idle", 1: "pairing", 2: "done", 3: "locked"}
RESULTS = {
    0: "ok",
    1: "the relay is not in pairing mode (press its button, then retry within 5 minutes)",
    2: "the relay could not authenticate the request (wrong setup code?)",
    3: "the relay rejected the request's contents",
}
HTTP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Issued:
    relay_id: str
    key: str
    home: str
    token: str


def issue_key(home_url: str, admin_token: str, name: str, home: str | None = None) -> Issued:
    """Ask the home box (``POST /api/relays/enroll``) for a relay id and key."""
    url = home_url.rstrip("/") + "/api/relays/enroll"
    body: dict[str, Any] = {"name": name}
    if home:
        body["home"] = home
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            doc = json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip()
        raise FleetError(f"home box {home_url} refused enrollment ({exc.code}: {detail})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FleetError(f"cannot reach home box {home_url}: {reason}; check --home") from None
    except ValueError:
        raise FleetError(f"home box {home_url} answered enrollment with bad JSON") from None
    try:
        return Issued(str(doc["relay_id"]), str(doc["key"]), str(doc["home"]), str(doc["token"]))
    except (KeyError, TypeError):
        raise FleetError(f"home box {home_url} answered enrollment without a key") from None


def _bleak() -> Any:
    try:
        import bleak
    except ImportError:
        raise FleetError(
            "BLE enrollment needs bleak: pip install 'bitchat-node[ble]' "
            "(or flash over USB with `bitchat-fleet relay flash --port DEV`)"
        ) from None
    return bleak


def parse_status(data: bytes) -> tuple[int, bytes, int]:
    """The provisioning STATUS value: (state, nonce, result)."""
    if len(data) != 10:
        raise FleetError(f"relay sent a {len(data)}-byte status, expected 10; wrong device?")
    return data[0], bytes(data[1:9]), data[9]


async def enroll_ble(
    setup_code: str,
    ssid: str,
    psk: str,
    issue_token: Callable[[], str],
    address: str | None = None,
    scan_timeout: float = 10.0,
) -> str:
    """Find a relay in pairing mode, then (only then) get a token, send the sealed request
    and wait for the relay's verdict; returns the relay's BLE address."""
    bleak = _bleak()
    sealing.normalise_code(setup_code)
    try:
        if address:
            device = await bleak.BleakScanner.find_device_by_address(address, scan_timeout)
        else:
            device = await bleak.BleakScanner.find_device_by_filter(
                lambda _d, adv: PROV_UUID in [u.lower() for u in adv.service_uuids],
                scan_timeout,
            )
    except (bleak.exc.BleakError, OSError) as exc:
        raise FleetError(
            f"no usable Bluetooth on this machine ({type(exc).__name__}: {exc}); "
            "use `bitchat-fleet relay flash --port DEV` over USB instead"
        ) from None
    if device is None:
        raise FleetError("no relay in pairing mode found; press its button and retry")
    token = issue_token()
    async with bleak.BleakClient(device) as client:
        state, nonce, _ = parse_status(bytes(await client.read_gatt_char(STATUS_UUID)))
        if state != 1:
            raise FleetError(f"relay is {STATE_NAMES.get(state, state)}: {RESULTS[1]}")
        verdict: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(STATUS_UUID, lambda _c, d: verdict.put_nowait(bytes(d)))
        frame = sealing.seal(setup_code, nonce, sealing.request(ssid, psk, token))
        for part in sealing.chunks(frame, client.mtu_size):
            await client.write_gatt_char(REQUEST_UUID, part, response=True)
        try:
            status = await asyncio.wait_for(verdict.get(), 10.0)
        except TimeoutError:
            raise FleetError("relay did not answer the provisioning request") from None
        state, _, result = parse_status(status)
        if result != 0:
            raise FleetError(f"relay refused provisioning: {RESULTS.get(result, result)}")
    return str(device.address)
