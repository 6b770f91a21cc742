"""A fake MicroPython board on a pseudo-terminal that speaks the raw-REPL byte protocol.

It answers Ctrl-C/Ctrl-A/Ctrl-B/Ctrl-D as MicroPython does, grants raw-paste mode with a small
window and ``\\x01`` flow control, and runs the received code in CPython against a directory
that stands for the board's flash (``open`` and ``os`` are mapped into it). Faults on demand:
stop answering after some commands, answer garbage, fail writes, or corrupt written data.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import threading
import traceback
import types
from pathlib import Path
from typing import Any

BANNER = b"raw REPL; CTRL-B to exit\r\n>"


class FakeBoard:
    def __init__(
        self,
        root: Path,
        *,
        window: int = 32,
        raw_paste: bool = True,
        silent_after: int | None = None,
        garbage: bool = False,
        fail_writes: bool = False,
        corrupt: bool = False,
    ) -> None:
        self.root = root
        self.window = window
        self.raw_paste = raw_paste
        self.silent_after = silent_after
        self.garbage = garbage
        self.fail_writes = fail_writes
        self.corrupt = corrupt
        self.master, slave = os.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave
        import tty

        tty.setraw(slave)
        self.mode = "friendly"
        self.code = bytearray()
        self.execs = 0
        self.resets = 0
        self.ns: dict[str, Any] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- the board's filesystem, seen through MicroPython's calls -------------------------

    def _path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def _open(self, p: str, mode: str = "r") -> Any:
        f = open(self._path(p), mode)  # noqa: SIM115
        if "w" in mode and (self.fail_writes or self.corrupt):
            board = self

            class Faulty(io.BufferedWriter):
                def write(self, b: Any) -> int:
                    if board.fail_writes:
                        raise OSError(28, "ENOSPC")
                    data = bytearray(b)
                    data[0] ^= 0xFF
                    return super().write(bytes(data))

            f.close()
            return Faulty(open(self._path(p), mode.replace("b", "") + "b", buffering=0))
        return f

    def _os(self) -> types.ModuleType:
        shim = types.ModuleType("os")
        shim.mkdir = lambda p: os.mkdir(self._path(p))  # type: ignore[attr-defined]
        shim.remove = lambda p: os.remove(self._path(p))  # type: ignore[attr-defined]
        shim.rename = lambda a, b: os.rename(self._path(a), self._path(b))  # type: ignore[attr-defined]
        return shim

    def _run(self, code: bytes) -> tuple[bytes, bytes]:
        out = io.StringIO()
        real_import = builtins.__import__

        def imp(name: str, *a: Any, **kw: Any) -> Any:
            return self._os() if name == "os" else real_import(name, *a, **kw)

        b = dict(vars(builtins), open=self._open, __import__=imp,
                 print=lambda *a, **k: print(*a, **k, file=out))  # fmt: skip
        self.ns["__builtins__"] = b
        try:
            exec(compile(code.decode(), "<stdin>", "exec"), self.ns)
            err = ""
        except Exception as exc:
            line = traceback.extract_tb(exc.__traceback__)[-1].lineno
            err = (
                f'Traceback (most recent call last):\r\n  File "<stdin>", line {line}, in '
                f"<module>\r\n{type(exc).__name__}: {exc}\r\n"
            )
        return out.getvalue().replace("\n", "\r\n").encode(), err.encode()

    # -- the byte protocol ----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._stop or (self.silent_after is not None and self.execs > self.silent_after):
            return
        with contextlib.suppress(OSError):  # closed under our feet at the end of a test
            os.write(self.master, data)

    def _finish(self) -> None:
        self.execs += 1
        out, err = self._run(bytes(self.code))
        self.code.clear()
        self._send(out + b"\x04" + err + b"\x04>")

    def _serve(self) -> None:
        pending = bytearray()
        while not self._stop:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            pending += chunk
            while pending:
                consumed = self._step(pending)
                if consumed == 0:
                    break
                del pending[:consumed]

    def _step(self, buf: bytearray) -> int:
        c = buf[0]
        if self.mode == "friendly":
            if c == 0x01:
                self.mode = "raw"
                self._send(b"\r\n" + BANNER)
            elif c == 0x03:
                self._send(b"\r\nKeyboardInterrupt: \r\n>>> ")
            elif c == 0x04:
                self.resets += 1
                self._send(b"MPY: soft reboot\r\n")
            return 1
        if self.mode == "raw":
            if c == 0x05:
                if len(buf) < 3:
                    return 0
                if self.garbage:
                    self._send(b"\xff?")
                elif self.raw_paste:
                    self.mode = "paste"
                    self.got = 0
                    self._send(b"R\x01" + self.window.to_bytes(2, "little"))
                else:
                    self._send(b"R\x00")
                return 3
            if c == 0x04:
                if self.code:
                    self._send(b"OK")
                    self._finish()
                else:
                    self._send(b"OK\x04\x04>")
                return 1
            if c == 0x02:
                self.mode = "friendly"
                self._send(b"\r\n>>> ")
                return 1
            if c == 0x01:
                self._send(b"\r\n" + BANNER[:-1])
                return 1
            if c == 0x03:
                return 1
            self.code.append(c)
            return 1
        # raw-paste: count bytes and grant a new window as each one is consumed.
        if c == 0x04:
            self.mode = "raw"
            self._send(b"\x04")
            self._finish()
            return 1
        self.code.append(c)
        self.got += 1
        if self.got % self.window == 0:
            self._send(b"\x01")
        return 1

    def close(self) -> None:
        self._stop = True
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
