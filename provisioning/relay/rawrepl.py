"""A MicroPython raw-REPL client with raw-paste flow control, over pyserial.

The byte protocol (MicroPython's docs, tools/pyboard.py): Ctrl-C interrupts the program,
Ctrl-A enters the raw REPL, which answers ``raw REPL; CTRL-B to exit\\r\\n>``. Raw-paste mode
is requested with ``\\x05A\\x01``: ``R\\x01`` plus a 2-byte little-endian window size accepts it
(``R\\x00``: not supported, fall back to plain raw mode). The host then sends at most a window
of bytes, and another window each time the board sends ``\\x01``; ``\\x04`` ends the input
and the board echoes ``\\x04``. Plain raw mode answers ``OK`` after the ``\\x04`` instead.
Either way the board then prints the output, ``\\x04``, the error output (a traceback),
``\\x04`` and the ``>`` prompt. Every read has a deadline, so a board that stops answering or
talks nonsense ends in a :class:`ReplError` saying where.
"""

from __future__ import annotations

import struct
import time
from typing import Protocol

from provisioning.errors import FleetError

BANNER = b"raw REPL; CTRL-B to exit\r\n"
MAX_REPLY = 1 << 20
PLAIN_CHUNK = 256


class ReplError(FleetError):
    """The board did not follow the raw-REPL protocol (silent, garbage, or a traceback)."""


class SerialPort(Protocol):
    """The part of ``serial.Serial`` the client uses."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...


class RawRepl:
    def __init__(self, port: SerialPort, *, name: str = "board", timeout: float = 5.0) -> None:
        self.port = port
        self.name = name
        self.timeout = timeout
        self.raw_paste: bool | None = None
        self._rest = bytearray()

    def _read_until(self, ending: bytes, what: str, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        data = self._rest
        self._rest = bytearray()
        while (end := data.find(ending)) < 0:
            if len(data) > MAX_REPLY:
                raise ReplError(f"{self.name}: reply too long while {what}; is this MicroPython?")
            chunk = self.port.read(max(1, min(self.port.in_waiting, 4096)))
            if chunk:
                data += chunk
            elif time.monotonic() > deadline:
                raise ReplError(
                    f"{self.name} stopped answering while {what} (got {bytes(data[-40:])!r}); "
                    "check the port, replug the board and retry"
                )
        # Bytes after the ending belong to the next read.
        cut = end + len(ending)
        self._rest = data[cut:]
        return bytes(data[:cut])

    def _read_exact(self, n: int, what: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        data = self._rest
        self._rest = bytearray()
        while len(data) < n:
            chunk = self.port.read(n - len(data))
            if chunk:
                data += chunk
            elif time.monotonic() > deadline:
                raise ReplError(f"{self.name} stopped answering while {what}")
        self._rest = data[n:]
        return bytes(data[:n])

    def _pending(self) -> bool:
        return bool(self._rest) or self.port.in_waiting > 0

    def enter(self) -> None:
        """Interrupt whatever runs and enter the raw REPL."""
        self.port.write(b"\r\x03\x03")
        time.sleep(0.05)
        self.port.reset_input_buffer()
        self._rest = bytearray()
        self.port.write(b"\r\x01")
        data = self._read_until(BANNER, "entering the raw REPL")
        if not data.endswith(BANNER):
            raise ReplError(f"{self.name}: no raw REPL banner; is MicroPython running?")

    def exec(self, code: str | bytes, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Run ``code``; returns (output, error output) as the board printed them."""
        src = code.encode() if isinstance(code, str) else code
        if b"\x04" in src:
            raise ValueError("code sent to the raw REPL cannot contain Ctrl-D (\\x04)")
        prompt = self._read_until(b">", "waiting for the prompt")
        if not prompt.endswith(b">") or prompt.strip(b"\r\n>"):
            raise ReplError(f"{self.name}: unexpected bytes before the prompt: {prompt[:40]!r}")
        if self.raw_paste is not False:
            self.port.write(b"\x05A\x01")
            answer = self._read_exact(2, "starting raw-paste mode")
            if answer == b"R\x01":
                self.raw_paste = True
                self._paste(src)
            elif answer == b"R\x00":
                self.raw_paste = False
                self._plain(src)
            else:
                raise ReplError(
                    f"{self.name}: unexpected answer {answer!r} to raw-paste; "
                    "is this MicroPython 1.14 or later?"
                )
        else:
            self._plain(src)
        out = self._read_until(b"\x04", "running code", timeout)[:-1]
        err = self._read_until(b"\x04", "reading errors", timeout)[:-1]
        return out, err

    def _plain(self, src: bytes) -> None:
        for i in range(0, len(src), PLAIN_CHUNK):
            self.port.write(src[i : i + PLAIN_CHUNK])
            time.sleep(0.01)
        self.port.write(b"\x04")
        ok = self._read_exact(2, "sending code")
        if ok != b"OK":
            raise ReplError(f"{self.name}: code not accepted (answer {ok!r})")

    def _paste(self, src: bytes) -> None:
        (window,) = struct.unpack("<H", self._read_exact(2, "reading the raw-paste window"))
        if window == 0:
            raise ReplError(f"{self.name}: raw-paste window of 0 bytes")
        remain = window
        i = 0
        while i < len(src):
            while remain == 0 or self._pending():
                b = self._read_exact(1, "waiting for raw-paste flow control")
                if b == b"\x01":
                    remain += window
                elif b == b"\x04":
                    # The board ended the input early (e.g. out of memory): acknowledge.
                    self.port.write(b"\x04")
                    return
                else:
                    raise ReplError(f"{self.name}: unexpected {b!r} during raw paste")
            part = src[i : i + remain]
            self.port.write(part)
            remain -= len(part)
            i += len(part)
        self.port.write(b"\x04")
        end = self._read_until(b"\x04", "ending raw paste")
        if end.strip(b"\x01") != b"\x04":
            raise ReplError(f"{self.name}: raw paste not completed ({end[:40]!r})")

    def run(self, code: str, what: str, timeout: float | None = None) -> str:
        """Run ``code``; a traceback becomes a ReplError naming ``what`` and its last line."""
        out, err = self.exec(code, timeout)
        if err.strip():
            last = err.decode(errors="replace").strip().splitlines()[-1]
            raise ReplError(f"{self.name}: {what} failed on the board: {last}")
        return out.decode(errors="replace")

    def soft_reset(self) -> None:
        """Leave the raw REPL and soft-reset, so boot.py and main.py run."""
        self._read_until(b">", "waiting for the prompt")
        self.port.write(b"\x02")
        time.sleep(0.05)
        self.port.write(b"\x04")
