"""A bounds-checked byte buffer with matching ``pull_*``/``push_*`` methods."""

from __future__ import annotations

import struct

from node.storage_agent.errors import ProtocolError


class Reader:
    """Reads big-endian fields from ``data``; every overrun is a :class:`ProtocolError`."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str = "message") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.what = what

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._data):
            raise ProtocolError(
                f"{self.what} truncated: needs {n} bytes at offset {self._pos}, "
                f"has {len(self._data) - self._pos}"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def pull_bytes(self, n: int) -> bytes:
        return bytes(self._take(n))

    def pull_u8(self) -> int:
        return self._take(1)[0]

    def pull_u16(self) -> int:
        value: int = struct.unpack(">H", self._take(2))[0]
        return value

    def pull_u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def pull_u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def pull_blob(self, limit: int) -> bytes:
        """A u32-length-prefixed byte string of at most ``limit`` bytes."""
        n = self.pull_u32()
        if n > limit:
            raise ProtocolError(f"{self.what}: field of {n} bytes exceeds the limit of {limit}")
        return self.pull_bytes(n)

    def pull_text(self, limit: int) -> str:
        raw = self.pull_blob(limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.what}: text field is not UTF-8") from None

    def end(self) -> None:
        """Require that the whole input was consumed."""
        if self._pos != len(self._data):
            raise ProtocolError(
                f"{self.what}: {len(self._data) - self._pos} unexpected trailing bytes"
            )


class Writer:
    """Builds big-endian fields into one ``bytes``."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def push_bytes(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def push_u8(self, v: int) -> Writer:
        self._parts.append(struct.pack(">B", v))
        return self

    def push_u16(self, v: int) -> Writer:
        self._parts.append(struct.pack(">H", v))
        return self

    def push_u32(self, v: int) -> Writer:
        self._parts.append(struct.pack(">I", v))
        return self

    def push_u64(self, v: int) -> Writer:
        self._parts.append(struct.pack(">Q", v))
        return self

    def push_blob(self, data: bytes) -> Writer:
        self.push_u32(len(data))
        self._parts.append(bytes(data))
        return self

    def push_text(self, text: str) -> Writer:
        return self.push_blob(text.encode("utf-8"))

    def data(self) -> bytes:
        return b"".join(self._parts)
