"""Enroll, watch and upgrade boxes over SSH: idempotent library calls behind the CLI.

Every function takes the inventory and a list of hosts and returns one result per host; one
host failing never stops the others (except a rolling upgrade, which stops starting new
batches when too many boxes failed). The box side is ``bitchat-box`` (provisioning/box.py),
which the image installs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.errors import FleetError, RemoteError
from provisioning.inventory import Box, Inventory, now
from provisioning.remote import Fleet, HostSpec, Outcome, SshOptions, fingerprint, spec_of

_NODE_ID = re.compile(r"^[a-z2-7]{52}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]{0,40}$")
_WHEEL = re.compile(r"^bitchat_node-([0-9][0-9A-Za-z.+!]*?)-py3-none-any\.whl$")


@dataclass
class HostResult:
    """The outcome of one command on one box."""

    host: str
    ok: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_facts(text: str, where: str) -> dict[str, Any]:
    """Validate the JSON ``bitchat-box facts`` printed; RemoteError on anything odd."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RemoteError(f"{where}: bitchat-box facts did not print JSON") from exc
    if not isinstance(doc, dict):
        raise RemoteError(f"{where}: bitchat-box facts printed {type(doc).__name__}, not an object")
    node_id = doc.get("node_id")
    if node_id is not None and not (isinstance(node_id, str) and _NODE_ID.match(node_id)):
        raise RemoteError(f"{where}: node id {str(node_id)[:60]!r} is malformed")
    for key in ("version", "previous"):
        value = doc.get(key)
        if value is not None and not (isinstance(value, str) and _VERSION.match(value)):
            raise RemoteError(f"{where}: {key} {str(value)[:60]!r} is malformed")
    for key in ("token_sha256",):
        value = doc.get(key)
        if value is not None and not (
            isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)
        ):
            raise RemoteError(f"{where}: {key} is malformed")
    temp = doc.get("temperature_c")
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, int | float)):
        raise RemoteError(f"{where}: temperature_c is not a number")
    if not isinstance(doc.get("api", {}), dict):
        raise RemoteError(f"{where}: api is not an object")
    disk = doc.get("disk")
    if disk is not None and not (
        isinstance(disk, dict)
        and all(
            isinstance(disk.get(k), int) and not isinstance(disk.get(k), bool)
            for k in ("total", "free")
        )
    ):
        raise RemoteError(f"{where}: disk is malformed")
    return doc


def _pin(box: Box | None) -> tuple[str, str] | None:
    if box is None or not box.host_key or not box.host_key_type:
        return None
    return box.host_key_type, box.host_key


def enroll(inv: Inventory, hosts: list[HostSpec], token: str, opts: SshOptions) -> list[HostResult]:
    """Pin each box's host key on first contact, check its enrollment token, record its id."""
    targets = [(spec, _pin(inv.get(spec.id))) for spec in hosts]
    want = token_digest(token)
    results: list[HostResult] = []
    with Fleet(targets, opts, allow_new=True) as fleet:
        outcomes = fleet.run([s for s, _ in targets], "bitchat-box facts")
    for spec, pinned in targets:
        out = outcomes[spec]
        if not out.ok:
            inv.upsert(
                spec.id,
                host=spec.host,
                port=spec.port,
                user=spec.user,
                reachable=False,
                last_error=out.error,
            )
            results.append(HostResult(spec.id, False, out.error or "failed"))
            continue
        try:
            facts = parse_facts(out.stdout, spec.id)
        except RemoteError as exc:
            results.append(HostResult(spec.id, False, str(exc)))
            continue
        got = facts.get("token_sha256") or ""
        if not hmac.compare_digest(got, want):
            msg = (
                f"{spec.id}: enrollment token does not match (the box was not built from this "
                "recipe, or its token file is missing); not enrolled"
            )
            results.append(HostResult(spec.id, False, msg))
            continue
        if not facts.get("node_id"):
            msg = f"{spec.id}: the box has no identity yet (first boot unfinished?); try again"
            results.append(HostResult(spec.id, False, msg))
            continue
        existing = inv.get(spec.id)
        values: dict[str, Any] = {
            "host": spec.host,
            "port": spec.port,
            "user": spec.user,
            "node_id": facts["node_id"],
            "version": facts.get("version"),
            "previous_version": facts.get("previous"),
            "last_seen": now(),
            "reachable": True,
            "last_error": None,
            "last_health": json.dumps(facts),
        }
        if pinned is None:
            key = out.host_key
            if key is None:
                results.append(HostResult(spec.id, False, f"{spec.id}: no host key was shown"))
                continue
            values.update(
                host_key_type=key.get_name(),
                host_key=base64.b64encode(key.asbytes()).decode(),
                fingerprint=fingerprint(key),
            )
        if existing is None or not existing.enrolled_at or pinned is None:
            values["enrolled_at"] = now()
        box = inv.upsert(spec.id, **values)
        note = "enrolled" if pinned is None else "already enrolled, refreshed"
        results.append(
            HostResult(
                spec.id,
                True,
                f"{spec.id}: {note}, node {box.node_id}",
                {"node_id": box.node_id, "fingerprint": box.fingerprint, "version": box.version},
            )
        )
    return results


def _summary(facts: dict[str, Any]) -> dict[str, Any]:
    """The status row of one box from its facts document (tolerates absent API parts)."""
    api: dict[str, Any] = facts.get("api") or {}

    def doc(path: str) -> dict[str, Any]:
        value = api.get(path)
        return value if isinstance(value, dict) else {}

    status = doc("/api/status")
    earnings = api.get("/api/earnings")
    total = None
    if isinstance(earnings, dict) and isinstance(earnings.get("all_time"), int | float):
        total = earnings["all_time"]
    hardware = doc("/api/hardware")
    temp = facts.get("temperature_c")
    if temp is None and isinstance(hardware.get("cpu_temp_c"), int | float):
        temp = hardware["cpu_temp_c"]
    disk = facts.get("disk") or {}
    return {
        "agent": "running" if status else "not running",
        "version": (status or {}).get("version") or facts.get("version"),
        "node_id": facts.get("node_id"),
        "earnings": total,
        "temperature_c": temp,
        "disk_free_gb": round(disk["free"] / 1e9, 2) if disk else None,
        "disk_total_gb": round(disk["total"] / 1e9, 2) if disk else None,
    }


def status(inv: Inventory, opts: SshOptions) -> list[HostResult]:
    """Ask every enrolled box for its facts; records reachability, version and health."""
    boxes = inv.enrolled()
    targets = [(spec_of(b), _pin(b)) for b in boxes]
    with Fleet(targets, opts) as fleet:
        outcomes = fleet.run([s for s, _ in targets], "bitchat-box facts", timeout=60)
    results: list[HostResult] = []
    for box in boxes:
        spec = spec_of(box)
        out = outcomes[spec]
        row: dict[str, Any] = {
            "host": box.id,
            "reachable": False,
            "version": box.version,
            "node_id": box.node_id,
            "earnings": None,
            "temperature_c": None,
            "disk_free_gb": None,
            "disk_total_gb": None,
            "agent": None,
            "last_error": None,
        }
        try:
            if not out.ok:
                raise RemoteError(out.error or "failed")
            facts = parse_facts(out.stdout, box.id)
            if facts.get("node_id") != box.node_id:
                raise RemoteError(
                    f"{box.id}: node id is now {facts.get('node_id')}, enrolled as "
                    f"{box.node_id}: the box was re-initialised; enroll it again"
                )
            row.update(_summary(facts), reachable=True)
            if row["agent"] != "running":
                row["last_error"] = f"{box.id}: agent not running"
            inv.upsert(
                box.id,
                reachable=True,
                version=facts.get("version"),
                previous_version=facts.get("previous"),
                last_seen=now(),
                last_health=json.dumps(facts),
                last_error=row["last_error"],
            )
        except RemoteError as exc:
            row["last_error"] = str(exc)
            inv.upsert(box.id, reachable=False, last_error=str(exc))
        ok = row["reachable"] and row["last_error"] is None
        results.append(HostResult(box.id, ok, row["last_error"] or f"{box.id}: ok", row))
    return results


# -- rolling upgrade ---------------------------------------------------------------------


@dataclass
class UpgradeReport:
    version: str
    results: list[HostResult]
    stopped: bool
    """True when the run stopped early because too many boxes failed."""


def wheel_version(wheel: Path) -> str:
    m = _WHEEL.match(wheel.name)
    if m is None or not wheel.is_file():
        raise FleetError(f"{wheel} is not a bitchat_node-VERSION-py3-none-any.whl file")
    return m.group(1)


def _upgrade_batch(
    fleet: Fleet,
    inv: Inventory,
    batch: list[Box],
    wheel: Path,
    version: str,
    health_timeout: float,
) -> list[HostResult]:
    specs = [spec_of(b) for b in batch]
    failed: dict[HostSpec, str] = {}
    facts_out = fleet.run(specs, "bitchat-box facts", timeout=60)
    before: dict[HostSpec, dict[str, Any]] = {}
    for spec in specs:
        try:
            if not facts_out[spec].ok:
                raise RemoteError(facts_out[spec].error or "failed")
            before[spec] = parse_facts(facts_out[spec].stdout, spec.id)
        except RemoteError as exc:
            failed[spec] = f"{exc} (not upgraded)"

    def step(todo: list[HostSpec], outcomes: dict[HostSpec, Outcome]) -> list[HostSpec]:
        for spec in todo:
            if not outcomes[spec].ok:
                failed[spec] = outcomes[spec].error or "failed"
        return [s for s in todo if s not in failed]

    todo = [s for s in specs if s not in failed and before[s].get("version") != version]
    remote_wheel = f"/tmp/{wheel.name}"
    todo = step(todo, fleet.put(todo, wheel, remote_wheel))
    q = shlex.quote
    todo = step(todo, fleet.run(todo, f"bitchat-box add-wheel {q(remote_wheel)}"))
    todo = step(todo, fleet.run(todo, f"bitchat-box install {q(version)}"))
    activated = step(todo, fleet.run(todo, f"bitchat-box activate {q(version)}"))
    rollback = [s for s in todo if s in failed]
    # Every box at the target version (new or already there) must pass the health check.
    check = activated + [s for s in specs if s not in failed and s not in todo]
    health = fleet.run(
        check, f"bitchat-box health {q(version)} {health_timeout:g}", timeout=health_timeout + 30
    )
    for spec in check:
        if not health[spec].ok:
            failed[spec] = f"health check failed: {health[spec].error}"
            if spec in activated:
                rollback.append(spec)
    rolled: dict[HostSpec, str] = {}
    if rollback:
        back = fleet.run(rollback, "bitchat-box rollback")
        for spec in rollback:
            prev = back[spec].stdout.strip() if back[spec].ok else ""
            if not back[spec].ok or not _VERSION.match(prev):
                rolled[spec] = f"ROLLBACK FAILED: {back[spec].error}"
                continue
            again = fleet.run(
                [spec],
                f"bitchat-box health {q(prev)} {health_timeout:g}",
                timeout=health_timeout + 30,
            )[spec]
            rolled[spec] = (
                f"rolled back to {prev}"
                if again.ok
                else f"rolled back to {prev} but it is unhealthy: {again.error}"
            )
    results = []
    for box, spec in zip(batch, specs, strict=True):
        if spec in failed:
            msg = failed[spec] + (f"; {rolled[spec]}" if spec in rolled else "")
            inv.upsert(box.id, last_error=msg, last_seen=now())
            if spec in rolled and rolled[spec].startswith("rolled back to"):
                inv.upsert(box.id, version=rolled[spec].split()[3])
            results.append(HostResult(box.id, False, msg, {"rolled_back": spec in rolled}))
        else:
            was = before[spec].get("version")
            msg = f"{box.id}: at {version}" + (f" (was {was})" if was != version else " already")
            inv.upsert(
                box.id,
                version=version,
                previous_version=was if was != version else box.previous_version,
                last_error=None,
                last_seen=now(),
            )
            results.append(HostResult(box.id, True, msg, {"from": was}))
    return results


def upgrade(
    inv: Inventory,
    wheel: Path,
    opts: SshOptions,
    *,
    max_unavailable: int = 1,
    max_failed: int = 0,
    health_timeout: float = 60.0,
) -> UpgradeReport:
    """Rolling upgrade in batches of ``max_unavailable``; a failing box is rolled back."""
    if max_unavailable < 1:
        raise FleetError("--max-unavailable must be at least 1")
    version = wheel_version(wheel)
    boxes = inv.enrolled()
    results: list[HostResult] = []
    stopped = False
    targets = [(spec_of(b), _pin(b)) for b in boxes]
    with Fleet(targets, opts) as fleet:
        for i in range(0, len(boxes), max_unavailable):
            batch = boxes[i : i + max_unavailable]
            if stopped:
                results += [
                    HostResult(b.id, False, f"{b.id}: not attempted (run stopped)") for b in batch
                ]
                continue
            results += _upgrade_batch(fleet, inv, batch, wheel, version, health_timeout)
            if sum(not r.ok for r in results) > max_failed:
                stopped = True
    return UpgradeReport(version, results, stopped)
