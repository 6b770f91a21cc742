"""The ``storage/1`` peer protocol: message codec (sans-I/O) and stream framing.

Every message is ``u32 length || u8 type || body`` with the length covering type and body and
bounded by :data:`MAX_FRAME`. One request and one answer per exchange; a stream may carry
several exchanges in turn. Requests: STORE (client-signed contract + chunk) -> STORED
(countersigned contract); FETCH -> CHUNK; CHALLENGE -> PROOF; VERDICT -> OK; VOUCHER -> OK;
RELEASE (contract id, signed by the contract's client) -> OK.
Any request may be answered with ERROR (code + one-line reason).
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass
from typing import Protocol

from node.storage_agent._buffer import Reader, Writer
from node.storage_agent.audit import NONCE_LEN, Challenge, Outcome, Response
from node.storage_agent.contracts import MAX_CHUNK, Contract
from node.storage_agent.errors import ProtocolError
from node.storage_agent.vouchers import Voucher

PROTOCOL = "storage/1"
MAX_FRAME = MAX_CHUNK + 64 * 1024
_OUTCOMES = list(Outcome)
_RELEASE_DOMAIN = b"bitchat-release-v1"


class MsgType(enum.IntEnum):
    STORE = 1
    STORED = 2
    FETCH = 3
    CHUNK = 4
    CHALLENGE = 5
    PROOF = 6
    VERDICT = 7
    VOUCHER = 8
    OK = 9
    ERROR = 10
    HELLO = 11
    INFO = 12
    RELEASE = 13


class ErrorCode(enum.IntEnum):
    REFUSED = 1
    """Uploads refused (degraded disk, heat, owner's pause)."""
    FULL = 2
    MISSING = 3
    BAD_REQUEST = 4
    UNAVAILABLE = 5
    """The node cannot reach its data disk right now; not a proof of loss."""
    INTERNAL = 6


@dataclass(frozen=True, slots=True)
class Store:
    contract: Contract
    data: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    contract: Contract


@dataclass(frozen=True, slots=True)
class Fetch:
    chunk_id: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class ChallengeMsg:
    challenge: Challenge


@dataclass(frozen=True, slots=True)
class Proof:
    response: Response


@dataclass(frozen=True, slots=True)
class Verdict:
    nonce: bytes
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class VoucherMsg:
    voucher: Voucher


@dataclass(frozen=True, slots=True)
class Release:
    """The client gives up a contract before its term ends (e.g. after a failed upload)."""

    contract_id: bytes
    signature: bytes
    """The contract's client signs :func:`release_body` of the contract id."""


def release_body(contract_id: bytes) -> bytes:
    return _RELEASE_DOMAIN + contract_id


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class Hello:
    """Asks a node who it is and whether it takes chunks."""


@dataclass(frozen=True, slots=True)
class Info:
    public_key: bytes
    """The node's Ed25519 key (contracts are made out to it and must be signed by it)."""
    free_bytes: int
    accepting: bool


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    reason: str


Message = (
    Store
    | Stored
    | Fetch
    | Chunk
    | ChallengeMsg
    | Proof
    | Verdict
    | VoucherMsg
    | Ok
    | Error
    | Hello
    | Info
    | Release
)


def encode(msg: Message) -> bytes:
    """One framed message."""
    w = Writer()
    match msg:
        case Store(contract, data):
            kind = MsgType.STORE
            w.push_blob(contract.encode()).push_blob(data)
        case Stored(contract):
            kind = MsgType.STORED
            w.push_blob(contract.encode())
        case Fetch(cid):
            kind = MsgType.FETCH
            w.push_bytes(cid)
        case Chunk(data):
            kind = MsgType.CHUNK
            w.push_blob(data)
        case ChallengeMsg(ch):
            kind = MsgType.CHALLENGE
            w.push_bytes(ch.encode())
        case Proof(resp):
            kind = MsgType.PROOF
            w.push_bytes(resp.encode())
        case Verdict(nonce, outcome):
            kind = MsgType.VERDICT
            w.push_bytes(nonce).push_u8(_OUTCOMES.index(outcome))
        case Release(contract_id, signature):
            kind = MsgType.RELEASE
            w.push_bytes(contract_id).push_bytes(signature)
        case VoucherMsg(v):
            kind = MsgType.VOUCHER
            w.push_bytes(v.encode())
        case Ok():
            kind = MsgType.OK
        case Error(code, reason):
            kind = MsgType.ERROR
            w.push_u8(code).push_text(reason[:400])
        case Hello():
            kind = MsgType.HELLO
        case Info(key, free, accepting):
            kind = MsgType.INFO
            w.push_bytes(key).push_u64(free).push_u8(int(accepting))
    body = w.data()
    return struct.pack(">IB", len(body) + 1, kind) + body


def decode(kind: int, body: bytes) -> Message:
    """Parse the body of one message; anything malformed raises :class:`ProtocolError`."""
    try:
        t = MsgType(kind)
    except ValueError:
        raise ProtocolError(f"storage/1: unknown message type {kind}") from None
    r = Reader(body, f"storage/1 {t.name}")
    msg: Message
    if t is MsgType.STORE:
        msg = Store(Contract.decode(r.pull_blob(1024)), r.pull_blob(MAX_CHUNK))
    elif t is MsgType.STORED:
        msg = Stored(Contract.decode(r.pull_blob(1024)))
    elif t is MsgType.FETCH:
        msg = Fetch(r.pull_bytes(32))
    elif t is MsgType.CHUNK:
        msg = Chunk(r.pull_blob(MAX_CHUNK))
    elif t is MsgType.CHALLENGE:
        return ChallengeMsg(Challenge.decode(body))
    elif t is MsgType.PROOF:
        return Proof(Response.decode(body))
    elif t is MsgType.VERDICT:
        nonce, n = r.pull_bytes(NONCE_LEN), r.pull_u8()
        if n >= len(_OUTCOMES):
            raise ProtocolError(f"storage/1 VERDICT: unknown outcome {n}")
        msg = Verdict(nonce, _OUTCOMES[n])
    elif t is MsgType.VOUCHER:
        return VoucherMsg(Voucher.decode(body))
    elif t is MsgType.OK:
        msg = Ok()
    elif t is MsgType.HELLO:
        msg = Hello()
    elif t is MsgType.RELEASE:
        msg = Release(r.pull_bytes(32), r.pull_bytes(64))
    elif t is MsgType.INFO:
        key, free, accepting = r.pull_bytes(32), r.pull_u64(), r.pull_u8()
        if accepting > 1:
            raise ProtocolError("storage/1 INFO: accepting flag must be 0 or 1")
        msg = Info(key, free, bool(accepting))
    else:
        code = r.pull_u8()
        try:
            ecode = ErrorCode(code)
        except ValueError:
            ecode = ErrorCode.INTERNAL
        msg = Error(ecode, r.pull_text(400))
    r.end()
    return msg


def decode_frame(frame: bytes) -> Message:
    """Parse one whole framed message (length prefix included)."""
    if len(frame) < 5:
        raise ProtocolError("storage/1: frame shorter than its header")
    length, kind = struct.unpack(">IB", frame[:5])
    if length != len(frame) - 4:
        raise ProtocolError(f"storage/1: frame says {length} bytes, has {len(frame) - 4}")
    return decode(kind, frame[5:])


class Stream(Protocol):
    """What the protocol needs of a stream (asyncio streams and transport streams alike)."""

    async def readexactly(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class _Split:
    """Adapts an asyncio (StreamReader, StreamWriter) pair to :class:`Stream`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


def split_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Split:
    return _Split(reader, writer)


async def read_message(stream: Stream) -> Message | None:
    """The next message, or None at a clean end of stream."""
    try:
        header = await stream.readexactly(5)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("storage/1: stream ended inside a message header") from None
    length, kind = struct.unpack(">IB", header)
    if not 1 <= length <= MAX_FRAME:
        raise ProtocolError(f"storage/1: frame of {length} bytes, allowed 1-{MAX_FRAME}")
    try:
        body = await stream.readexactly(length - 1)
    except asyncio.IncompleteReadError:
        raise ProtocolError("storage/1: stream ended inside a message") from None
    return decode(kind, body)


async def write_message(stream: Stream, msg: Message) -> None:
    stream.write(encode(msg))
    await stream.drain()
