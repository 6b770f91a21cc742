"""TOML configuration with documented defaults and strict validation.

Each section is a frozen dataclass; each key is declared with :func:`setting`, which carries its
help text and bounds. Loading rejects unknown sections and keys, wrong types and out-of-range
values with an error naming the file, the key and what is allowed, so nothing ever starts
half-configured. ``render_default()`` writes the commented ``config.toml`` that ``init`` creates.

To add a key: add a field with ``setting(...)`` to the section that owns the concern (or add a
section class and a field for it on :class:`Config`). Supported types: ``str``, ``int``,
``float``, ``bool`` and ``tuple[str, ...]`` (a TOML array of strings).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError

CONFIG_FILE = "config.toml"
_MAX_CONFIG_BYTES = 1 << 20


def setting(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    kind: str | None = None,
    max_len: int | None = None,
) -> Any:
    """Declare a config key with its default, help text and bounds."""
    meta = {
        "doc": doc,
        "min": min,
        "max": max,
        "choices": choices,
        "kind": kind,
        "max_len": max_len,
    }
    return field(default=default, metadata=meta)


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ValueError with a reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:7700")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" and not all(p.isalnum() or "-" in p for p in host.split(".")):
            raise ValueError(f"bad host {host!r}") from None
    return host, int(port_text)


@dataclass(frozen=True)
class NodeSection:
    """General settings of the box."""

    name: str = setting(
        "", "Friendly name shown on the dashboard (empty: the hostname).", max_len=64
    )
    log_level: str = setting(
        "info", "Log verbosity.", choices=("debug", "info", "warning", "error")
    )


@dataclass(frozen=True)
class NetworkSection:
    """The UDP transport and the overlay."""

    listen: str = setting(
        "0.0.0.0:7700", "UDP address the transport listens on (HOST:PORT).", kind="hostport"
    )
    bootstrap: tuple[str, ...] = setting(
        (), "Peers to join the network through, as HOST:PORT.", kind="hostport"
    )
    max_sessions: int = setting(1024, "Most concurrent peer sessions.", min=1, max=65536)
    congestion: str = setting(
        "tolerant",
        "Congestion control of the transport: the loss-tolerant controller or NewReno.",
        choices=("tolerant", "newreno"),
    )
    idle_timeout_s: float = setting(
        60.0, "Seconds without a packet from a peer before its session is dropped.", min=5, max=3600
    )
    keepalive_s: float = setting(
        20.0,
        "Seconds of silence after which a session sends a keepalive (holds NAT bindings open).",
        min=1,
        max=600,
    )


@dataclass(frozen=True)
class NatSection:
    """NAT traversal: STUN, router port mapping, hole punching, relaying."""

    stun_servers: tuple[str, ...] = setting(
        (),
        "STUN servers (HOST:PORT) used to learn the public address and NAT class; one with "
        "RFC 5780 support, or two; empty: the bootstrap peers (every node serves STUN).",
        kind="hostport",
    )
    stun_server: bool = setting(True, "Answer STUN binding requests on the node's UDP port.")
    port_mapping: bool = setting(
        True, "Ask the home router for a port mapping (PCP, NAT-PMP, then UPnP-IGD)."
    )
    mapping_lifetime_s: int = setting(
        3600, "Lifetime requested for router port mappings (renewed at half).", min=120, max=86400
    )
    offer_relay: bool = setting(
        True, "Relay for peers that cannot reach each other directly (when reachable)."
    )
    relay_max_connections: int = setting(64, "Most connections relayed at once.", min=0, max=4096)
    relay_max_bytes: int = setting(
        256 << 20, "Most bytes relayed per connection.", min=0, max=1 << 40
    )
    relay_max_seconds: int = setting(
        3600, "Longest time a relayed connection lasts.", min=10, max=86400
    )
    rediscover_s: float = setting(
        1800.0, "Seconds between NAT behaviour re-checks.", min=30, max=86400
    )


@dataclass(frozen=True)
class OverlaySection:
    """The Kademlia DHT."""

    k: int = setting(20, "Bucket size and replication factor (Kademlia k).", min=2, max=64)
    alpha: int = setting(3, "Parallel requests per lookup (Kademlia alpha).", min=1, max=16)
    rpc_timeout_s: float = setting(
        5.0, "Seconds before a DHT request counts as lost.", min=0.2, max=60
    )
    record_lifetime_s: int = setting(
        24 * 3600, "Lifetime of this node's signed record.", min=600, max=30 * 86400
    )
    provider_ttl_s: int = setting(
        24 * 3600, "How long provider records are kept.", min=600, max=30 * 86400
    )
    republish_s: int = setting(
        12 * 3600, "How often this node re-announces what it provides.", min=300, max=30 * 86400
    )
    refresh_s: int = setting(
        3600, "Buckets idle this long are refreshed with a lookup.", min=60, max=86400
    )


@dataclass(frozen=True)
class WebSection:
    """The local dashboard and its JSON API."""

    listen: str = setting(
        "0.0.0.0:7780",
        "HTTP address of the dashboard (HOST:PORT); 127.0.0.1:7780 keeps it on this box only.",
        kind="hostport",
    )
    access: str = setting(
        "lan",
        "Who may open the dashboard: 'local' (this box only), 'lan' (loopback and private "
        "addresses: 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7, fe80::/10) or 'any'.",
        choices=("local", "lan", "any"),
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        "Extra host names the dashboard answers to, besides localhost, the box's addresses and "
        "<hostname>.local (requests naming any other Host are refused, against DNS rebinding).",
        max_len=253,
    )
    mdns: bool = setting(
        True, "Announce the dashboard on the LAN by mDNS as _bitchat._tcp and <hostname>.local."
    )
    live_interval: float = setting(
        5.0, "Seconds between live updates pushed to an open dashboard.", min=1.0, max=300.0
    )


@dataclass(frozen=True)
class HwmonSection:
    """Hardware monitoring: temperatures, fan, LEDs, power and the data disk."""

    sysfs_root: str = setting(
        "/", "Root under which /sys and /proc are read (another path only for tests).", max_len=4096
    )
    poll_interval_s: float = setting(5.0, "Seconds between sensor readings.", min=0.2, max=600)
    warm_c: float = setting(
        65.0, "SoC temperature (C) at which background scans pause.", min=30, max=120
    )
    hot_c: float = setting(
        75.0, "Temperature (C) at which bandwidth is capped and uploads refused.", min=30, max=120
    )
    critical_c: float = setting(
        85.0, "Temperature (C) at which even audits stop being answered.", min=30, max=130
    )
    hysteresis_c: float = setting(
        5.0, "Degrees below a threshold before its level is left.", min=0.5, max=20
    )
    cool_down_s: float = setting(
        30.0, "Seconds the temperature must stay low before a level is left.", min=0, max=3600
    )
    hot_bandwidth_cap_kbps: int = setting(
        2000, "Relay and upload bandwidth cap while hot (kbit/s).", min=8, max=10_000_000
    )
    fan_pin: int = setting(-1, "BCM GPIO pin of a PWM fan (-1: no fan).", min=-1, max=27)
    fan_pwm_hz: float = setting(100.0, "PWM frequency of the fan pin (Hz).", min=1, max=50_000)
    fan_start_c: float = setting(
        50.0, "Temperature (C) at which the fan starts; full speed at warm_c.", min=20, max=120
    )
    fan_min_duty: float = setting(30.0, "Lowest fan duty cycle (%) once it runs.", min=0, max=100)
    leds: tuple[str, ...] = setting(
        ("ACT",), "Board LEDs under /sys/class/leds that show the box's state.", max_len=32
    )
    led_pin: int = setting(-1, "BCM GPIO pin of a status LED (-1: none).", min=-1, max=27)
    data_mount: str = setting(
        "",
        "Mount point the data disk must be on (empty: the data dir's mount at start).",
        max_len=4096,
    )
    low_space_percent: float = setting(
        5.0, "Free space (%) on the data disk below which uploads are refused.", min=0, max=50
    )
    smartctl: str = setting("smartctl", "The smartctl program (smartmontools).", max_len=4096)
    smart_interval_s: float = setting(
        21600.0, "Seconds between SMART health checks of the data disk.", min=60, max=604800
    )
    smart_timeout_s: float = setting(
        20.0, "Seconds smartctl may take before it counts as hung.", min=0.1, max=300
    )


@dataclass(frozen=True)
class RelaysSection:
    """MicroPython relay boards enrolled with this box."""

    listen: str = setting(
        "0.0.0.0:7701", "UDP address relays register on (HOST:PORT).", kind="hostport"
    )
    keepalive_ms: int = setting(
        15000, "Relay heartbeat interval in ms (three missed: offline).", min=1000, max=300000
    )
    byte_quota: int = setting(
        64 << 20, "Most bytes one relayed session may move.", min=1024, max=(1 << 30) - 1
    )
    packet_quota: int = setting(
        100000, "Most datagrams one relayed session may move.", min=16, max=(1 << 30) - 1
    )
    idle_ms: int = setting(
        60000, "A relayed session idle this long (ms) is freed.", min=1000, max=3600000
    )
    advertise_host: str = setting(
        "",
        "Host peers reach the relay boards' offers at: the router's public address when the"
        " boards' ports are forwarded there (empty: each board's address as the box sees it).",
        max_len=253,
        kind="host",
    )


@dataclass(frozen=True)
class StorageSection:
    """Chunk storage, proofs of storage and earnings."""

    path: str = setting(
        "",
        "Data disk directory for chunks, contracts and vouchers (empty: the data dir).",
        max_len=4096,
    )
    allocation_bytes: int = setting(
        0, "Bytes offered to the network (0: all but the reserve).", min=0, max=1 << 60
    )
    reserve_percent: float = setting(
        10.0, "Part of the data disk's filesystem always left free, percent.", min=1, max=90
    )
    client_quota_bytes: int = setting(
        0, "Most bytes one client may keep here (0: no per-client limit).", min=0, max=1 << 60
    )
    min_price_per_gib_month: float = setting(
        0.0, "Lowest storage price this box accepts, BCT per GiB-month.", min=0, max=1e9
    )
    price_per_gib_month: float = setting(
        1.0,
        "Storage price this box offers when it places files, BCT per GiB-month.",
        min=0,
        max=1e9,
    )
    egress_price_per_gib: float = setting(
        0.5, "Price this box pays per GiB it downloads from other boxes, BCT.", min=0, max=1e9
    )
    relay_price_per_gib: float = setting(
        0.5,
        "Price this box pays a relay per GiB it forwards for it (both ways), BCT.",
        min=0,
        max=1e9,
    )
    contract_days: float = setting(
        30.0,
        "Term of the contracts this box makes when it places files, days.",
        min=0.001,
        max=3650,
    )
    erasure_k: int = setting(4, "Shares needed to rebuild a stripe.", min=1, max=64)
    erasure_n: int = setting(8, "Shares made per stripe (k-of-n).", min=1, max=128)
    audit_interval: float = setting(
        600.0, "Seconds between audit rounds over the files this box placed.", min=1, max=86400
    )
    audit_samples: int = setting(16, "Segments sampled per audit.", min=1, max=64)
    pay_interval: float = setting(
        600.0,
        "Seconds between voucher rounds to the boxes that store or relay for us.",
        min=1,
        max=86400,
    )
    scrub_days: float = setting(
        7.0, "Each stored chunk is re-hashed about once per this many days.", min=0.0001, max=365
    )
    disk_check_interval: float = setting(
        10.0, "Seconds between checks that the data disk is the right one.", min=1, max=3600
    )
    repair_after_offline: float = setting(
        3600.0,
        "Seconds a node may stay unreachable before its shares are re-created.",
        min=1,
        max=30 * 86400,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; one attribute per ``[section]``."""

    node: NodeSection = field(default_factory=NodeSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    web: WebSection = field(default_factory=WebSection)
    storage: StorageSection = field(default_factory=StorageSection)
    relays: RelaysSection = field(default_factory=RelaysSection)
    hwmon: HwmonSection = field(default_factory=HwmonSection)
    nat: NatSection = field(default_factory=NatSection)
    overlay: OverlaySection = field(default_factory=OverlaySection)


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "an array of strings"


def _check_value(where: str, tp: Any, meta: typing.Mapping[str, Any], value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected an array of strings, got {value!r}")
        items = tuple(value)
        for item in items:
            _check_scalar(where, str, meta, item)
        return items
    return _check_scalar(where, tp, meta, value)


def _check_scalar(where: str, tp: Any, meta: typing.Mapping[str, Any], value: Any) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (tp in (int, float) and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {value!r} is out of range, allowed {lo} to {hi}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where}: {value!r} is not allowed, choose one of {allowed}")
    max_len = meta.get("max_len")
    if max_len is not None and len(value) > max_len:
        raise ConfigError(f"{where}: longer than {max_len} characters")
    if meta.get("kind") == "hostport":
        try:
            parse_hostport(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}, got {value!r}") from None
    if meta.get("kind") == "host" and value:
        try:
            if ":" in value:
                raise ValueError
            parse_hostport(value + ":0")
        except ValueError:
            raise ConfigError(
                f"{where}: expected a host name or IPv4 address, got {value!r}"
            ) from None
    return value


def _name(key: str) -> str:
    """A key as written in TOML: bare when it can be, else quoted (never spans lines)."""
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else json.dumps(key)


def from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document and build a :class:`Config`."""
    sections = _section_types()
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections:
            allowed = ", ".join(f"[{s}]" for s in sections)
            raise ConfigError(f"{source}: unknown section [{_name(name)}]; sections are {allowed}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table")
        cls = sections[name]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            where = f"{source}: [{name}] {_name(key)}"
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{where}: unknown key; keys of [{name}] are {known}")
            values[key] = _check_value(where, hints[key], fields[key].metadata, value)
        built[name] = cls(**values)
    return Config(**built)


def load(path: Path) -> Config:
    """Read and validate a config file; a missing file gives the defaults."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is larger than {_MAX_CONFIG_BYTES} bytes")
    if not raw.strip():
        raise ConfigError(
            f"{path}: config file is empty; delete it to use the defaults "
            "or restore it from `bitchat-node init`"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return from_dict(data, str(path))


def override(cfg: Config, section: str, **values: Any) -> Config:
    """Return ``cfg`` with keys of one section replaced (validated like the file)."""
    checked = getattr(from_dict({section: values}, "command line"), section)
    picked = {k: getattr(checked, k) for k in values}
    merged = dataclasses.replace(getattr(cfg, section), **picked)
    return dataclasses.replace(cfg, **{section: merged})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_default() -> str:
    """The commented config file ``init`` writes: every key, its help and its default."""
    lines = [
        "# bitchat-node configuration.",
        "# Every key is shown with its default, commented out; uncomment a line to change it.",
        "# Unknown keys are an error, so a typo cannot go unnoticed.",
    ]
    for name, cls in _section_types().items():
        lines += ["", f"[{name}]"]
        if cls.__doc__:
            lines.append(f"# {cls.__doc__.strip()}")
        for f in dataclasses.fields(cls):
            meta = f.metadata
            lines.append(f"# {meta['doc']}")
            bounds = []
            if meta.get("min") is not None or meta.get("max") is not None:
                bounds.append(f"range {meta.get('min')} to {meta.get('max')}")
            if meta.get("choices"):
                bounds.append("one of " + ", ".join(_toml_value(c) for c in meta["choices"]))
            if bounds:
                lines.append(f"# Allowed: {'; '.join(bounds)}.")
            lines.append(f"# {f.name} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the config, for the API and `status`."""
    out: dict[str, Any] = dataclasses.asdict(cfg)
    return out
