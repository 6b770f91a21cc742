"""``bitchat-fleet relay …``: flash and enroll MicroPython relay boards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from provisioning.errors import FleetError
from provisioning.relay import bundle, enroll, flash, rawrepl


def _open_serial(port: str, baud: int) -> rawrepl.SerialPort:
    try:
        import serial
    except ImportError:
        raise FleetError("flashing needs pyserial: pip install pyserial") from None
    try:
        ser: rawrepl.SerialPort = serial.Serial(port, baud, timeout=0.1, write_timeout=5)
    except (serial.SerialException, OSError) as exc:
        raise FleetError(f"cannot open {port}: {exc}; check --port and permissions") from None
    return ser


@click.group()
def relay() -> None:
    """Flash and enroll MicroPython relay boards (ESP32, Pico W)."""


@relay.command("flash")
@click.option("--port", required=True, help="Serial device of the board, e.g. /dev/ttyACM0.")
@click.option("--target", type=click.Choice(sorted(bundle.TARGETS)), default="esp32",
              show_default=True, help="Board family.")  # fmt: skip
@click.option("--home", "home_url", required=True, help="Home box dashboard URL.")
@click.option("--token", envvar="BITCHAT_ADMIN_TOKEN", required=True,
              help="The home box's admin token ($BITCHAT_ADMIN_TOKEN).")  # fmt: skip
@click.option("--name", default="relay", show_default=True, help="Name shown on the dashboard.")
@click.option("--relay-home", default=None,
              help="HOST:PORT the relay uses to reach the box (default: from --home).")  # fmt: skip
@click.option("--ssid", default="", help="Wi-Fi network the relay joins.")
@click.option("--psk", envvar="BITCHAT_WIFI_PSK", default="",
              help="Wi-Fi password ($BITCHAT_WIFI_PSK).")  # fmt: skip
@click.option("--bundle-dir", type=click.Path(path_type=Path), default=None,
              help="A built bundle (default: build it from firmware/micropython).")  # fmt: skip
@click.option("--baud", default=115200, show_default=True)
def flash_cmd(
    port: str, target: str, home_url: str, token: str, name: str, relay_home: str | None,
    ssid: str, psk: str, bundle_dir: Path | None, baud: int,
) -> None:  # fmt: skip
    """Copy the firmware and an issued key to a board over USB, verify, and restart it."""
    b = bundle.load(bundle_dir) if bundle_dir else bundle.load_or_build(target)
    if b.target != target:
        raise FleetError(f"bundle {b.root} is for {b.target}, not {target}")
    # Open the port before asking the box for a key, so a wrong --port issues none.
    repl = rawrepl.RawRepl(_open_serial(port, baud), name=port)
    issued = enroll.issue_key(home_url, token, name, relay_home)
    code = flash.new_setup_code()
    cfg = flash.RelayConfig(issued.relay_id, issued.key, issued.home, ssid, psk, code)
    click.echo(f"flashing {b.target} bundle ({b.total_bytes} bytes) to {port}")
    flash.flash(repl, b, cfg, progress=lambda what: click.echo(f"  {what}"))
    click.echo(f"relay {issued.relay_id} enrolled with {issued.home}; restarted")
    pretty = " ".join(code[i : i + 4] for i in range(0, 16, 4))
    click.echo(f"setup code for the label (BLE re-provisioning): {pretty}")


@relay.command("enroll")
@click.option("--ble", is_flag=True, required=True, help="Provision over Bluetooth LE.")
@click.option("--home", "home_url", required=True, help="Home box dashboard URL.")
@click.option("--token", envvar="BITCHAT_ADMIN_TOKEN", required=True,
              help="The home box's admin token ($BITCHAT_ADMIN_TOKEN).")  # fmt: skip
@click.option("--setup-code", required=True, help="The code on the relay's label.")
@click.option("--ssid", required=True, help="Wi-Fi network the relay joins.")
@click.option("--psk", envvar="BITCHAT_WIFI_PSK", default="",
              help="Wi-Fi password ($BITCHAT_WIFI_PSK).")  # fmt: skip
@click.option("--name", default="relay", show_default=True)
@click.option("--relay-home", default=None, help="HOST:PORT the relay uses to reach the box.")
@click.option("--address", default=None, help="BLE address of the relay (default: scan).")
def enroll_cmd(
    ble: bool, home_url: str, token: str, setup_code: str, ssid: str, psk: str, name: str,
    relay_home: str | None, address: str | None,
) -> None:  # fmt: skip
    """Send Wi-Fi credentials and an enrollment token to a relay in pairing mode."""
    from provisioning.relay import sealing

    sealing.normalise_code(setup_code)
    issued: list[enroll.Issued] = []

    def issue() -> str:
        issued.append(enroll.issue_key(home_url, token, name, relay_home))
        return issued[0].token

    found = asyncio.run(enroll.enroll_ble(setup_code, ssid, psk, issue, address))
    click.echo(f"relay {issued[0].relay_id} at {found} provisioned; it restarts and registers")
