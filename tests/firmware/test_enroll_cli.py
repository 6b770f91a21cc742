"""`bitchat-fleet relay enroll --ble` on a machine without Bluetooth, and its argument checks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from provisioning.cli import main as fleet
from provisioning.relay import bundle
from tests.support import missing

ARGS = ["relay", "enroll", "--ble", "--home", "http://127.0.0.1:9", "--token", "t",
        "--ssid", "home"]  # fmt: skip


def test_without_bluetooth_it_says_so_and_issues_no_key() -> None:
    try:
        import bleak  # noqa: F401
    except ImportError:
        missing("bleak is not installed (pip install -e '.[test]')")
    result = CliRunner().invoke(fleet, [*ARGS, "--setup-code", "ABCD-EFGH-JKLM-NPQR"])
    assert result.exit_code == 1
    # No adapter (CI, containers): a clear message. A laptop with one finds no relay instead.
    assert "no usable Bluetooth" in result.output or "no relay in pairing mode" in result.output
    assert "relay flash --port" in result.output or "press its button" in result.output
    assert "cannot reach home box" not in result.output  # no key was requested for nothing


def test_bad_setup_code_is_refused_before_anything_else() -> None:
    result = CliRunner().invoke(fleet, [*ARGS, "--setup-code", "1234"])
    assert result.exit_code == 1 and "setup code is 16 letters" in result.output


def test_flash_with_a_wrong_port_names_it_and_issues_no_key(tmp_path: Path) -> None:
    built = bundle.build("rp2", tmp_path)
    result = CliRunner().invoke(fleet, [
        "relay", "flash", "--port", str(tmp_path / "ttyNOPE"), "--target", "rp2",
        "--home", "http://127.0.0.1:9", "--token", "t", "--bundle-dir", str(built.root),
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "cannot open" in result.output and "ttyNOPE" in result.output


def test_flash_refuses_a_bundle_for_another_board(tmp_path: Path) -> None:
    built = bundle.build("esp32", tmp_path)
    result = CliRunner().invoke(fleet, [
        "relay", "flash", "--port", "/dev/null", "--target", "rp2",
        "--home", "http://127.0.0.1:9", "--token", "t", "--bundle-dir", str(built.root),
    ])  # fmt: skip
    assert result.exit_code == 1 and "is for esp32, not rp2" in result.output
