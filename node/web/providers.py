"""What the dashboard shows, read from the agent's services.

Each section (earnings, storage, network, hardware) comes from one method of one service. When
the service is not running, lacks the method, or fails, the section is
``{"available": false, "reason": "..."}`` and the page says so: nothing is ever made up.
Values are passed through :func:`clean` so that a non-finite float cannot break the JSON.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import log

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    """Where one dashboard section comes from."""

    service: str
    method: str
    what: str
    """What the section is, for the reason shown when it is missing."""


SECTIONS: dict[str, Source] = {
    "earnings": Source("storage", "earnings", "earnings"),
    "storage": Source("storage", "storage", "storage figures"),
    "network": Source("transport", "network", "network figures"),
    "hardware": Source("hwmon", "hardware", "hardware readings"),
}


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def clean(value: Any) -> Any:
    """``value`` made JSON-safe: NaN and infinities become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


async def call(ctx: AgentContext, service: str, method: str, *args: Any) -> Any:
    """Call ``service.method(*args)`` (sync or async); raises LookupError when it is absent."""
    svc = ctx.services.get(service)
    if svc is None:
        raise LookupError(f"the {service} service is not running in this agent")
    fn = getattr(svc, method, None)
    if not callable(fn):
        raise LookupError(f"the {service} service of this version does not offer {method}")
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def section(ctx: AgentContext, name: str) -> dict[str, Any]:
    """One dashboard section, with ``available`` true or false."""
    src = SECTIONS[name]
    try:
        data = await call(ctx, src.service, src.method)
    except LookupError as exc:
        return unavailable(f"no {src.what}: {exc}")
    except Exception as exc:
        _log.warning("provider_failed", service=src.service, method=src.method, error=str(exc))
        return unavailable(f"no {src.what}: the {src.service} service failed ({exc})")
    if not isinstance(data, dict):
        return unavailable(f"no {src.what}: the {src.service} service returned no document")
    return {"available": True, **clean(data)}


def _update(ctx: AgentContext) -> dict[str, Any]:
    svc = ctx.services.get("updater")
    if svc is None:
        return unavailable(
            "this agent does not check for updates itself; "
            "upgrades are rolled out with `bitchat-fleet upgrade`"
        )
    try:
        doc = svc.status()
    except Exception as exc:
        return unavailable(f"the updater failed ({exc})")
    return {"available": True, **clean(doc)}


def status(ctx: AgentContext) -> dict[str, Any]:
    """The agent's status document plus update status and the dashboard's own view."""
    try:
        doc = ctx.status()
    except Exception as exc:
        _log.warning("status_failed", error=str(exc))
        doc = {
            "node_id": ctx.identity.node_id_text,
            "started_at": ctx.started_at,
            "uptime_s": round(time.time() - ctx.started_at, 1),
            "error": f"a service failed to report its status ({exc})",
        }
    out: dict[str, Any] = clean(doc)
    out["update"] = _update(ctx)
    return out


def trim_contracts(doc: dict[str, Any], limit: int) -> dict[str, Any]:
    """``doc`` (a storage section) with at most ``limit`` contracts listed, the newest first,
    plus ``contracts_total`` and ``contracts_by_state`` counted over all of them."""
    contracts = doc.get("contracts")
    if not isinstance(contracts, list):
        return doc
    by_state: dict[str, int] = {}
    for c in contracts:
        state = str(c.get("state", "unknown")) if isinstance(c, dict) else "unknown"
        by_state[state] = by_state.get(state, 0) + 1

    def start(c: Any) -> float:
        value = c.get("start") if isinstance(c, dict) else None
        return float(value) if isinstance(value, int | float) else 0.0

    newest = sorted(contracts, key=start, reverse=True)[:limit]
    return {
        **doc,
        "contracts": newest,
        "contracts_total": len(contracts),
        "contracts_by_state": dict(sorted(by_state.items())),
    }


async def snapshot(ctx: AgentContext, contracts: int | None = None) -> dict[str, dict[str, Any]]:
    """Every section at once: what the live feed pushes (with ``contracts`` listed at most)
    and /metrics exports."""
    out: dict[str, dict[str, Any]] = {"status": status(ctx)}
    for name in SECTIONS:
        out[name] = await section(ctx, name)
    if contracts is not None:
        out["storage"] = trim_contracts(out["storage"], contracts)
    return out
