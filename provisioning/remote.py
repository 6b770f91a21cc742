"""SSH to boxes with Fabric, host keys pinned in the inventory.

Fabric accepts any host key by default (paramiko's AutoAddPolicy). Here a box that is not yet
enrolled may only be reached with ``allow_new`` (the key it shows is recorded, then pinned by
the caller once enrollment succeeded); an enrolled box is reached only if it shows the pinned
key, and a changed key raises HostKeyError. Commands run on many boxes at once through a
ThreadingGroup; each host's outcome (result or one-line error) is returned, never raised.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection, ThreadingGroup
from fabric.exceptions import GroupException
from invoke.exceptions import UnexpectedExit

from provisioning.errors import HostKeyError, RemoteError
from provisioning.inventory import Box

MAX_REPLY = 1 << 20
_HOST = re.compile(
    r"^(?:(?P<user>[a-z_][a-z0-9_.-]{0,31})@)?(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|"
    r"(?P<host>[A-Za-z0-9.-]{1,253}))(?::(?P<port>\d{1,5}))?$"
)


@dataclass(frozen=True)
class SshOptions:
    """How the operator logs in: default user, key file, timeouts."""

    user: str = "pi"
    identity_file: Path | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 300.0


@dataclass(frozen=True)
class HostSpec:
    host: str
    port: int
    user: str

    @property
    def id(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host(text: str, default_user: str) -> HostSpec:
    """``[user@]host[:port]`` (``[v6]:port`` for IPv6); RemoteError when malformed."""
    m = _HOST.match(text.strip())
    if m is None:
        raise RemoteError(f"{text!r} is not a host: use [user@]host[:port]")
    port = int(m.group("port") or 22)
    if not 0 < port < 65536:
        raise RemoteError(f"{text!r}: port {port} is out of range")
    return HostSpec(m.group("v6") or m.group("host"), port, m.group("user") or default_user)


def spec_of(box: Box) -> HostSpec:
    return HostSpec(box.host, box.port, box.user)


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _fingerprint_b64(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RecordFirstKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """First contact: accept, and remember what was shown so the caller can pin it."""

    def __init__(self) -> None:
        self.key: paramiko.PKey | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.key = key


class _Refuse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyError(
            f"{hostname} is not enrolled (no pinned host key): run bitchat-fleet enroll first"
        )


@dataclass
class Outcome:
    """What happened on one host."""

    spec: HostSpec
    stdout: str = ""
    error: str | None = None
    host_key: paramiko.PKey | None = None
    """The key a first contact showed (only with allow_new)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def connection(
    spec: HostSpec, opts: SshOptions, pinned: tuple[str, str] | None, allow_new: bool
) -> tuple[Connection, _RecordFirstKey | None]:
    kwargs: dict[str, Any] = {"allow_agent": True, "look_for_keys": opts.identity_file is None}
    if opts.identity_file is not None:
        kwargs["key_filename"] = str(opts.identity_file)
    kwargs["banner_timeout"] = opts.connect_timeout
    kwargs["auth_timeout"] = opts.connect_timeout
    cxn = Connection(
        spec.host,
        user=spec.user,
        port=spec.port,
        connect_timeout=opts.connect_timeout,
        connect_kwargs=kwargs,
    )
    recorder = None
    if pinned is not None:
        name = spec.host if spec.port == 22 else f"[{spec.host}]:{spec.port}"
        key = paramiko.PKey.from_type_string(pinned[0], base64.b64decode(pinned[1]))
        cxn.client.get_host_keys().add(name, pinned[0], key)
        cxn.client.set_missing_host_key_policy(_Refuse())
    elif allow_new:
        recorder = _RecordFirstKey()
        cxn.client.set_missing_host_key_policy(recorder)
    else:
        cxn.client.set_missing_host_key_policy(_Refuse())
    return cxn, recorder


def describe(exc: BaseException, spec: HostSpec, pinned: tuple[str, str] | None) -> str:
    """One line saying what went wrong with a host and what to do."""
    where = spec.id
    if isinstance(exc, paramiko.BadHostKeyException):
        old = _fingerprint_b64(pinned[1]) if pinned else "?"
        return (
            f"{where}: HOST KEY CHANGED (now {fingerprint(exc.key)}, pinned {old}): refusing to "
            "connect; if the box was re-imaged, run bitchat-fleet forget and enroll it again"
        )
    if isinstance(exc, HostKeyError):
        return f"{where}: {exc}"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: SSH login as {spec.user} refused: check the user and key (-i)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionError):
        return f"{where}: cannot connect (connection refused or unreachable)"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"{where}: timed out"
    if isinstance(exc, UnexpectedExit):
        res = exc.result
        tail = (res.stderr or res.stdout or "").strip().splitlines()[-1:] or [""]
        return f"{where}: '{res.command}' failed with exit {res.exited}: {tail[0][:300]}"
    if isinstance(exc, paramiko.SSHException | OSError | EOFError):
        return f"{where}: SSH error: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def remote_command(spec: HostSpec, command: str) -> str:
    """The command as run on the box: through sudo unless logged in as root."""
    return command if spec.user == "root" else f"sudo -n {command}"


class Fleet:
    """Connections to a set of boxes; run the same step on all of them in parallel."""

    def __init__(
        self,
        targets: list[tuple[HostSpec, tuple[str, str] | None]],
        opts: SshOptions,
        *,
        allow_new: bool = False,
    ) -> None:
        self.opts = opts
        self.pinned = {spec: pin for spec, pin in targets}
        self.cxns: dict[HostSpec, Connection] = {}
        self.recorders: dict[HostSpec, _RecordFirstKey | None] = {}
        for spec, pin in targets:
            self.cxns[spec], self.recorders[spec] = connection(spec, opts, pin, allow_new)

    def close(self) -> None:
        for cxn in self.cxns.values():
            try:
                cxn.close()
            except Exception:  # closing a broken connection must not hide the real result
                continue

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _outcomes(self, specs: list[HostSpec], results: dict[Any, Any]) -> dict[HostSpec, Outcome]:
        by_cxn = {id(self.cxns[s]): s for s in specs}
        out: dict[HostSpec, Outcome] = {}
        for cxn, res in results.items():
            spec = by_cxn[id(cxn)]
            rec = self.recorders.get(spec)
            outcome = Outcome(spec, host_key=rec.key if rec else None)
            if isinstance(res, BaseException):
                outcome.error = describe(res, spec, self.pinned.get(spec))
            elif hasattr(res, "exited") and res.exited != 0:
                tail = (res.stderr or res.stdout or "").strip().splitlines()[-1:] or [""]
                outcome.error = f"{spec.id}: '{res.command}' exited {res.exited}: {tail[0][:300]}"
                outcome.stdout = res.stdout[:MAX_REPLY]
            else:
                outcome.stdout = (getattr(res, "stdout", "") or "")[:MAX_REPLY]
            out[spec] = outcome
        for spec in specs:
            out.setdefault(spec, Outcome(spec, error=f"{spec.id}: no result"))
        return out

    def run(
        self, specs: list[HostSpec], command: str, timeout: float | None = None
    ) -> dict[HostSpec, Outcome]:
        """Run ``command`` on every host in ``specs`` at once."""
        if not specs:
            return {}
        group = ThreadingGroup.from_connections([self.cxns[s] for s in specs])
        # One command per host; sudo is added per host, so run per-host commands in threads.
        commands = {id(self.cxns[s]): remote_command(s, command) for s in specs}
        if len(set(commands.values())) == 1:
            try:
                results: dict[Any, Any] = group.run(
                    next(iter(commands.values())),
                    hide=True,
                    warn=True,
                    in_stream=False,
                    timeout=timeout or self.opts.command_timeout,
                )
            except GroupException as exc:
                results = exc.result
            return self._outcomes(specs, results)
        merged: dict[HostSpec, Outcome] = {}
        for cmd in sorted(set(commands.values())):
            subset = [s for s in specs if commands[id(self.cxns[s])] == cmd]
            sub_group = ThreadingGroup.from_connections([self.cxns[s] for s in subset])
            try:
                results = sub_group.run(
                    cmd,
                    hide=True,
                    warn=True,
                    in_stream=False,
                    timeout=timeout or self.opts.command_timeout,
                )
            except GroupException as exc:
                results = exc.result
            merged.update(self._outcomes(subset, results))
        return merged

    def put(self, specs: list[HostSpec], local: Path, remote: str) -> dict[HostSpec, Outcome]:
        """Upload one file to every host in ``specs`` at once."""
        if not specs:
            return {}
        group = ThreadingGroup.from_connections([self.cxns[s] for s in specs])
        try:
            results: dict[Any, Any] = group.put(str(local), remote=remote)
        except GroupException as exc:
            results = exc.result
        return self._outcomes(specs, results)
