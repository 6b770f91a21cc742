"""Tests on a real Raspberry Pi box (BITCHAT_HIL_PI=user@host); skipped without one."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from typing import Any

import pytest

from hil_tests.conftest import Pi
from node.identity import Identity, decode_id
from node.transport.endpoint import Endpoint
from node.transport.nat.service import REACH_PROTOCOL

pytestmark = pytest.mark.pi


def get_json(url: str, token: str | None = None, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.load(resp)


def test_agent_is_healthy(pi: Pi) -> None:
    state = pi.ssh("systemctl is-active bitchat-node", check=False).strip()
    assert state == "active", f"bitchat-node.service is {state}"
    status = get_json(pi.web + "api/status")
    assert len(status["node_id"]) == 52
    assert status["uptime_s"] > 0
    local = json.loads(pi.ssh("bitchat-node status --json"))
    assert local["node_id"] == status["node_id"]


def test_thermal_reading_matches_sysfs(pi: Pi) -> None:
    millideg = int(pi.ssh("cat /sys/class/thermal/thermal_zone0/temp").strip())
    hardware = get_json(pi.web + "api/hardware")
    assert hardware["cpu_temp_c"] is not None
    assert abs(hardware["cpu_temp_c"] - millideg / 1000) < 5.0


def test_identify_blinks_the_act_led(pi: Pi) -> None:
    token = os.environ.get("BITCHAT_HIL_TOKEN")
    if not token:
        pytest.skip("set BITCHAT_HIL_TOKEN (the box's admin token) to drive the identify LED")
    get_json(pi.web + "api/actions/identify", token, {"seconds": 5})
    # Sample the LED through sysfs on the box: a blinking pattern shows both states.
    samples = pi.ssh(
        "for i in $(seq 40); do cat /sys/class/leds/ACT/brightness; sleep 0.1; done"
    ).split()
    assert {"0"} < set(samples) or len(set(samples)) > 1, samples
    time.sleep(6)
    trigger = pi.ssh("cat /sys/class/leds/ACT/trigger")
    assert "[none]" not in trigger or "identify" not in trigger


def test_data_disk_removal_and_return(pi: Pi) -> None:
    disk = os.environ.get("BITCHAT_HIL_DISK")
    if not disk:
        pytest.skip("set BITCHAT_HIL_DISK=/dev/sdX (the data disk) to run the disk test")
    name = os.path.basename(disk)
    pi.ssh(f"echo 1 | sudo tee /sys/block/{name}/device/delete >/dev/null")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if get_json(pi.web + "api/storage").get("degraded"):
            break
        time.sleep(2)
    else:
        pytest.fail("the box did not go degraded after its data disk vanished")
    pi.ssh(
        "for h in /sys/class/scsi_host/host*/scan; do echo '- - -' | sudo tee $h >/dev/null; done"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not get_json(pi.web + "api/storage").get("degraded"):
            return
        time.sleep(3)
    pytest.fail("the box did not recover after its data disk returned")


@pytest.mark.serial
def test_relay_flash_and_enroll_over_serial(serial_port: str, pi: Pi) -> None:
    import subprocess
    import sys

    token = os.environ.get("BITCHAT_HIL_TOKEN")
    if not token:
        pytest.skip("set BITCHAT_HIL_TOKEN so the relay can be enrolled with the box")
    target = os.environ.get("BITCHAT_HIL_RELAY_TARGET", "esp32")
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "relay", "flash", "--port", serial_port,
         "--target", target, "--home", pi.web, "--token", token],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if relays_status(pi).get("online", 0) >= 1:
            return
        time.sleep(3)
    pytest.fail("the flashed relay did not register with its home box within 2 minutes")


def relays_status(pi: Pi) -> dict[str, Any]:
    relays: dict[str, Any] = get_json(pi.web + "api/status").get("services", {}).get("relays", {})
    return relays


async def echo_through(address: tuple[str, int], node_id: bytes, payload: bytes) -> bytes:
    """Open a transport session to ``address`` from a fresh identity, check that the box
    answered, and echo ``payload`` on the agent's reach protocol."""
    endpoint = Endpoint(Identity.generate())
    await endpoint.bind("0.0.0.0", 0)
    try:
        conn = await endpoint.connect(address, timeout=20)
        assert conn.peer_id == node_id, "the session through the board reached another node"
        stream = await conn.open_stream(REACH_PROTOCOL)
        stream.write(payload)
        stream.write_eof()
        await stream.drain()
        echoed = await asyncio.wait_for(stream.read(), 20)
        await conn.close("hil test done")
        return echoed
    finally:
        await endpoint.close()


@pytest.mark.serial
def test_relay_board_forwards_a_session_to_its_box(serial_port: str, pi: Pi) -> None:
    """The enrolled board holds an open allocation that the box offers in its node record; a
    session from this machine to the offer's address reaches the box's agent through the board
    and data goes both ways (the board forwards ciphertext it cannot read)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        relays = relays_status(pi)
        free = [o for o in relays.get("offers", []) if not o.get("in_use")]
        if free:
            break
        time.sleep(3)
    else:
        pytest.fail(
            f"the box lists no open relay offer after 2 minutes (relays: {relays.get('online', 0)} "
            "online); enroll the board first (test_relay_flash_and_enroll_over_serial)"
        )
    used_before = relays.get("offers_used", 0)
    host, port = free[0]["address"].rsplit(":", 1)
    node_id = decode_id(get_json(pi.web + "api/status")["node_id"])
    payload = os.urandom(6000)
    assert asyncio.run(echo_through((host, int(port)), node_id, payload)) == payload
    assert relays_status(pi).get("offers_used", 0) >= used_before + 1
