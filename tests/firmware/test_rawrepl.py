"""The raw-REPL client and `relay flash` against a fake board on a real pseudo-terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.relay import bundle, flash, rawrepl
from tests.firmware.fakeboard import FakeBoard
from tests.firmware.fakes import install_micropython

install_micropython()
from brelay import cfg as fw_cfg  # noqa: E402

CONFIG = flash.RelayConfig("0a" * 8, "1b" * 32, "192.168.1.5:7701", "home", "password1",
                           "ABCDEFGHJKLMNPQR")  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> bundle.Bundle:
    return bundle.build("esp32", tmp_path_factory.mktemp("bundle"))


def open_board(tmp_path: Path, **faults: object) -> tuple[FakeBoard, rawrepl.RawRepl]:
    root = tmp_path / "flash"
    root.mkdir()
    board = FakeBoard(root, **faults)  # type: ignore[arg-type]
    port = serial.Serial(board.port, 115200, timeout=0.05)
    return board, rawrepl.RawRepl(port, name="fake board", timeout=1.0)


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[list[FakeBoard]]:
    made: list[FakeBoard] = []
    yield made
    for b in made:
        b.close()


@pytest.mark.parametrize("raw_paste", [True, False], ids=["raw-paste", "plain-raw"])
def test_flash_copies_verifies_configures_and_resets(
    tmp_path: Path, built: bundle.Bundle, boards: list[FakeBoard], raw_paste: bool
) -> None:
    board, repl = open_board(tmp_path, raw_paste=raw_paste)
    boards.append(board)
    flash.flash(repl, built, CONFIG)
    for f in built.files:
        assert (board.root / f.path).read_bytes() == (built.root / f.path).read_bytes()
    assert not list(board.root.rglob("*.part"))
    on_board = fw_cfg.parse((board.root / "relay.json").read_text())
    assert on_board["relay_id"] == bytes.fromhex(CONFIG.relay_id)
    assert on_board["home"] == ("192.168.1.5", 7701) and on_board["ssid"] == "home"
    assert repl.raw_paste is raw_paste
    assert _wait(lambda: board.resets == 1 and board.mode == "friendly")


def _wait(cond: object) -> bool:
    import time

    for _ in range(200):
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_board_that_stops_answering(tmp_path: Path, built: bundle.Bundle,
                                    boards: list[FakeBoard]) -> None:  # fmt: skip
    board, repl = open_board(tmp_path, silent_after=3)
    boards.append(board)
    with pytest.raises(rawrepl.ReplError, match="stopped answering"):
        flash.flash(repl, built, CONFIG)


def test_board_that_answers_garbage(tmp_path: Path, built: bundle.Bundle,
                                    boards: list[FakeBoard]) -> None:  # fmt: skip
    board, repl = open_board(tmp_path, garbage=True)
    boards.append(board)
    with pytest.raises(rawrepl.ReplError, match="unexpected answer"):
        flash.flash(repl, built, CONFIG)


def test_failed_write_is_reported_with_the_boards_error(
    tmp_path: Path, built: bundle.Bundle, boards: list[FakeBoard]
) -> None:
    board, repl = open_board(tmp_path, fail_writes=True)
    boards.append(board)
    with pytest.raises(rawrepl.ReplError, match=r"writing lib/brelay/.*ENOSPC"):
        flash.flash(repl, built, CONFIG)
    assert not (board.root / "relay.json").exists()


def test_corrupted_file_fails_the_hash_check(
    tmp_path: Path, built: bundle.Bundle, boards: list[FakeBoard]
) -> None:
    board, repl = open_board(tmp_path, corrupt=True)
    boards.append(board)
    with pytest.raises(rawrepl.ReplError, match="corrupt on the board"):
        flash.flash(repl, built, CONFIG)


def test_traceback_is_reported(tmp_path: Path, boards: list[FakeBoard]) -> None:
    board, repl = open_board(tmp_path)
    boards.append(board)
    repl.enter()
    assert repl.run("print(6 * 7)", "multiplying").strip() == "42"
    with pytest.raises(rawrepl.ReplError, match="dividing failed on the board: ZeroDivision"):
        repl.run("1 / 0", "dividing")
    assert repl.run("print('still alive')", "checking").strip() == "still alive"


class Scripted:
    """A serial port that replays fixed bytes from the board and records what was sent."""

    def __init__(self, reply: bytes) -> None:
        self.reply = bytearray(reply)
        self.sent = bytearray()

    @property
    def in_waiting(self) -> int:
        return len(self.reply)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self.reply[:size])
        del self.reply[:size]
        return out

    def write(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def reset_input_buffer(self) -> None:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_any_reply_ends_in_a_result_or_a_repl_error(head: bytes, tail: bytes) -> None:
    port = Scripted(b">" + head + tail)
    repl = rawrepl.RawRepl(port, timeout=0.0)
    try:
        out, err = repl.exec("print(1)")
    except rawrepl.ReplError:
        return
    assert isinstance(out, bytes) and isinstance(err, bytes)


class PasteBoard(Scripted):
    """Answers raw-paste flow control as it consumes bytes, with any window size."""

    def __init__(self, window: int) -> None:
        super().__init__(b">R\x01" + window.to_bytes(2, "little"))
        self.window = window
        self.code = bytearray()
        self.started = False

    def write(self, data: bytes) -> int:
        for b in data:
            if not self.started:
                self.sent.append(b)
                self.started = len(self.sent) == 3
            elif b == 4:
                self.reply += b"\x04out\x04\x04"
            else:
                self.code.append(b)
                if len(self.code) % self.window == 0:
                    self.reply += b"\x01"
        return len(data)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 300), st.binary(min_size=1, max_size=700).map(lambda b: b.replace(b"\x04", b""))
)
def test_raw_paste_respects_any_window(window: int, code: bytes) -> None:
    port = PasteBoard(window)
    repl = rawrepl.RawRepl(port, timeout=0.0)
    out, err = repl.exec(code)
    assert (out, err) == (b"out", b"")
    assert port.sent == b"\x05A\x01" and port.code == code


def test_code_with_an_end_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="Ctrl-D"):
        rawrepl.RawRepl(Scripted(b">")).exec(b"print(1)\x04")


def test_manifest_with_bad_paths_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"target": "rp2", "files": [{"path": "../x", "size": 1, "sha256": "0"}]})
    )
    with pytest.raises(bundle.BundleError, match="bad path"):
        bundle.load(tmp_path)
