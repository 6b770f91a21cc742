# The relay's configuration, persisted as JSON on the board's flash.
#
# Keys: relay_id (16 hex), key (64 hex), home ("host:port"), ssid, psk, port_base, epoch,
# setup (setup code), setup_shown, log. load() validates everything and says what is wrong.
import json
import os

PATH = "relay.json"
_MAX_BYTES = 4096


class ConfigError(ValueError):
    pass


def parse_home(text):
    if not isinstance(text, str):
        raise ConfigError("home must be a string HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("home must be HOST:PORT")
    if len(host) > 253 or any(c in host for c in " /\\\"'"):
        raise ConfigError("home has a bad host")
    return host, int(port)


def _hex(text, n, what):
    if not isinstance(text, str) or len(text) != 2 * n:
        raise ConfigError(what + " must be " + str(2 * n) + " hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(what + " must be hex")


def parse_token(token):
    """An enrollment token "BR1:<relay id>:<key>:<host>:<port>" -> (id, key, (host, port))."""
    if not isinstance(token, str) or len(token) > 400 or not token.startswith("BR1:"):
        raise ConfigError("enrollment token must start with BR1:")
    parts = token[4:].split(":", 2)
    if len(parts) != 3:
        raise ConfigError("enrollment token is incomplete")
    return _hex(parts[0], 8, "relay id"), _hex(parts[1], 32, "key"), parse_home(parts[2])


def parse(text):
    """Validate config JSON text; returns the runtime dict (bytes keys, (host, port) home)."""
    if len(text) > _MAX_BYTES:
        raise ConfigError("config is larger than 4096 bytes")
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeError):
        raise ConfigError("config is not JSON")
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    out = {"raw": raw}
    if "relay_id" in raw or "key" in raw or "home" in raw:
        out["relay_id"] = _hex(raw.get("relay_id"), 8, "relay_id")
        out["key"] = _hex(raw.get("key"), 32, "key")
        out["home"] = parse_home(raw.get("home"))
    for name, lo, hi, default in (
        ("port_base", 1024, 65000, 7710),
        ("epoch", 0, 0x7FFFFFFF, 0),
        ("log", 0, 3, 2),
    ):
        v = raw.get(name, default)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(name + " must be an integer " + str(lo) + "-" + str(hi))
        out[name] = v
    for name, hi in (("ssid", 32), ("psk", 63), ("setup", 16)):
        v = raw.get(name, "")
        if not isinstance(v, str) or len(v) > hi:
            raise ConfigError(name + " must be a string of at most " + str(hi) + " characters")
        out[name] = v
    out["setup_shown"] = raw.get("setup_shown") is True
    return out


def load(path=PATH):
    """The config at ``path``; an empty one (first boot) when the file does not exist."""
    try:
        with open(path) as f:
            text = f.read(_MAX_BYTES + 1)
    except OSError:
        return parse("{}")
    return parse(text)


def save(raw, path=PATH):
    """Write the raw dict atomically (temp file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(raw))
    os.rename(tmp, path)
