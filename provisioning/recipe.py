"""Image recipes: a TOML file saying how to customise a base image for a fleet.

Every section and key is declared in ``SCHEMA`` with its type and help text; loading rejects
unknown sections and keys, wrong types and bad values with an error naming the file and the key.
Relative paths in a recipe are resolved against the recipe's own directory. docs/fleet.md
documents the format and images/recipe.example.toml is a complete example.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.errors import RecipeError

MAX_RECIPE_BYTES = 1 << 20
FIRST_BOOT_MODES = ("auto", "cloud-init", "firstrun")
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?$"
)
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCALE = re.compile(
    r"^[A-Za-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]{1,20})?(@[a-z]{1,20})?$|^C\.UTF-8$"
)
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+\-]{1,40}(/[A-Za-z0-9_+\-]{1,40}){0,2}$")
_KEYBOARD = re.compile(r"^[a-z]{2,8}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_UNIX_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+-]{16,128}$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")

# section -> key -> (type, default, help); a default of None means "required".
SCHEMA: dict[str, dict[str, tuple[type, Any, str]]] = {
    "image": {
        "hostname": (
            str,
            "bitchat-{serial}",
            "Hostname pattern; {serial} is replaced by the last 6 hex digits of the "
            "board's serial number on first boot.",
        ),
        "first_boot": (
            str,
            "auto",
            "How the OS is customised on first boot: cloud-init (user-data, "
            "network-config, meta-data on the boot partition), firstrun "
            "(Raspberry Pi Imager style firstrun.sh) or auto (cloud-init when the base "
            "image ships cloud-init files on its boot partition).",
        ),
        "timezone": (str, "Etc/UTC", "Time zone, e.g. Europe/Berlin."),
        "locale": (str, "en_GB.UTF-8", "System locale, e.g. de_DE.UTF-8."),
        "keyboard": (str, "gb", "Console keyboard layout, e.g. de."),
    },
    "user": {
        "name": (str, "pi", "The operator's login on the box (created on first boot)."),
        "ssh_authorized_keys": (list, [], "SSH public keys allowed to log in, one per entry."),
        "ssh_authorized_keys_files": (
            list,
            [],
            "Files of SSH public keys (e.g. ~/.ssh/id_ed25519.pub).",
        ),
    },
    "wifi": {
        "ssid": (str, None, "Network name (1-32 bytes)."),
        "psk": (str, None, "WPA2/WPA3 passphrase (8-63 characters); stored only in the image."),
        "country": (str, "GB", "Regulatory country code, e.g. DE."),
        "hidden": (bool, False, "Whether the network hides its SSID."),
    },
    "agent": {
        "enrollment_token": (
            str,
            None,
            "Secret the box proves at enrollment (16-128 URL-safe characters); "
            "bitchat-fleet enroll --recipe compares it.",
        ),
        "wheelhouse": (
            str,
            "auto",
            "Directory of aarch64 wheels installed offline on first boot, or auto: "
            "download them from PyPI and build this project's wheel.",
        ),
        "config": (
            str,
            "",
            "A bitchat-node config.toml to install on the box (empty: the defaults).",
        ),
        "data_dir": (str, "/var/lib/bitchat-node", "The agent's data directory on the box."),
        "python_version": (str, "3.11", "Python version of the base image (for auto wheels)."),
    },
}
_REQUIRED_SECTIONS = ("agent",)


@dataclass(frozen=True, slots=True)
class Wifi:
    ssid: str
    psk: str
    country: str
    hidden: bool


@dataclass(frozen=True, slots=True)
class Recipe:
    """A validated recipe; paths are absolute."""

    path: Path
    hostname: str
    first_boot: str
    timezone: str
    locale: str
    keyboard: str
    user: str
    ssh_keys: tuple[str, ...]
    wifi: Wifi | None
    enrollment_token: str
    wheelhouse: Path | None
    """None for ``auto``."""
    config: Path | None
    data_dir: str
    python_version: str

    def __repr__(self) -> str:
        return f"Recipe({self.path})"


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise RecipeError(f"{where}: {msg}")


def _type_name(t: type) -> str:
    return {str: "a string", list: "an array of strings", bool: "true or false"}[t]


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse(text: str, path: Path) -> Recipe:
    """Validate recipe text; ``path`` names the file in errors and anchors relative paths."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from exc
    values: dict[str, dict[str, Any]] = {}
    for section, body in doc.items():
        if section not in SCHEMA:
            raise RecipeError(
                f"{path}: unknown section [{section}] (known: {', '.join(sorted(SCHEMA))})"
            )
        _check(isinstance(body, dict), f"{path}: {section}", "must be a table ([section])")
        for key, value in body.items():
            loc = f"{path}: {section}.{key}"
            if key not in SCHEMA[section]:
                known = ", ".join(sorted(SCHEMA[section]))
                raise RecipeError(f"{loc}: unknown key (known in [{section}]: {known})")
            want = SCHEMA[section][key][0]
            ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
            if ok and want is list:
                ok = all(isinstance(v, str) for v in value)
            _check(ok, loc, f"must be {_type_name(want)}, got {type(value).__name__}")
            if isinstance(value, str):
                _check(len(value) <= 4096, loc, "is longer than 4096 characters")
        values[section] = dict(body)
    for section in _REQUIRED_SECTIONS:
        _check(section in values, str(path), f"section [{section}] is required")
    for section, declared in SCHEMA.items():
        if section not in values and section == "wifi":
            continue
        got = values.setdefault(section, {})
        for key, (_, default, _) in declared.items():
            if key not in got:
                _check(default is not None, f"{path}: {section}.{key}", "is required")
                got[key] = default
    base = path.parent
    img, usr, agent = values["image"], values["user"], values["agent"]

    def where(key: str) -> str:
        return f"{path}: {key}"

    hostname = img["hostname"]
    _check(
        _HOST_LABEL.fullmatch(hostname.replace("{serial}", "abcdef")) is not None
        and "{" not in hostname.replace("{serial}", ""),
        where("image.hostname"),
        "must be a lowercase hostname label (a-z, 0-9, -; at most 63), {serial} allowed",
    )
    _check(
        img["first_boot"] in FIRST_BOOT_MODES,
        where("image.first_boot"),
        f"must be one of {', '.join(FIRST_BOOT_MODES)}",
    )
    _check(
        _TIMEZONE.fullmatch(img["timezone"]) is not None,
        where("image.timezone"),
        "must look like Region/City, e.g. Europe/Berlin",
    )
    _check(
        _LOCALE.fullmatch(img["locale"]) is not None,
        where("image.locale"),
        "must look like en_GB.UTF-8",
    )
    _check(
        _KEYBOARD.fullmatch(img["keyboard"]) is not None,
        where("image.keyboard"),
        "must be a layout name like gb or de",
    )
    _check(
        _USER.fullmatch(usr["name"]) is not None,
        where("user.name"),
        "must be a Unix user name (a-z, 0-9, _, -; at most 32)",
    )
    ssh_keys: list[str] = []
    for i, line in enumerate(usr["ssh_authorized_keys"]):
        _check(
            _SSH_KEY.fullmatch(line.strip()) is not None,
            where(f"user.ssh_authorized_keys[{i}]"),
            "is not an SSH public key line",
        )
        ssh_keys.append(line.strip())
    for i, name in enumerate(usr["ssh_authorized_keys_files"]):
        key_file = _resolve(base, name)
        try:
            lines = key_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(
                f"{where(f'user.ssh_authorized_keys_files[{i}]')}: cannot read {key_file} ({exc})"
            ) from exc
        for line in lines:
            if line.strip() and not line.startswith("#"):
                _check(
                    _SSH_KEY.fullmatch(line.strip()) is not None,
                    f"{key_file}",
                    "holds a line that is not an SSH public key",
                )
                ssh_keys.append(line.strip())
    _check(
        bool(ssh_keys),
        where("user.ssh_authorized_keys"),
        "at least one SSH public key is needed to reach the box",
    )
    wifi = None
    if "wifi" in values:
        w = values["wifi"]
        ssid_len = len(w["ssid"].encode())
        _check(
            1 <= ssid_len <= 32 and _PRINTABLE.fullmatch(w["ssid"]) is not None,
            where("wifi.ssid"),
            "must be 1-32 bytes without control characters",
        )
        psk = w["psk"]
        _check(
            (8 <= len(psk) <= 63 and _PRINTABLE.fullmatch(psk) is not None and psk.isascii())
            or re.fullmatch(r"[0-9a-fA-F]{64}", psk) is not None,
            where("wifi.psk"),
            "must be 8-63 printable ASCII characters or 64 hex digits",
        )
        _check(
            _COUNTRY.fullmatch(w["country"]) is not None,
            where("wifi.country"),
            "must be a two-letter country code like DE",
        )
        wifi = Wifi(w["ssid"], psk, w["country"], w["hidden"])
    _check(
        _TOKEN.fullmatch(agent["enrollment_token"]) is not None,
        where("agent.enrollment_token"),
        "must be 16-128 characters of A-Z a-z 0-9 . _ ~ + -",
    )
    wheelhouse = None if agent["wheelhouse"] == "auto" else _resolve(base, agent["wheelhouse"])
    if wheelhouse is not None:
        _check(
            wheelhouse.is_dir(),
            where("agent.wheelhouse"),
            f"{wheelhouse} is not a directory of wheels",
        )
    config = _resolve(base, agent["config"]) if agent["config"] else None
    if config is not None:
        _check(config.is_file(), where("agent.config"), f"{config} does not exist")
    _check(
        _UNIX_PATH.fullmatch(agent["data_dir"]) is not None and ".." not in agent["data_dir"],
        where("agent.data_dir"),
        "must be an absolute path like /var/lib/bitchat-node",
    )
    _check(
        re.fullmatch(r"3\.\d{1,2}", agent["python_version"]) is not None,
        where("agent.python_version"),
        "must look like 3.11",
    )
    return Recipe(
        path=path,
        hostname=hostname,
        first_boot=img["first_boot"],
        timezone=img["timezone"],
        locale=img["locale"],
        keyboard=img["keyboard"],
        user=usr["name"],
        ssh_keys=tuple(ssh_keys),
        wifi=wifi,
        enrollment_token=agent["enrollment_token"],
        wheelhouse=wheelhouse,
        config=config,
        data_dir=agent["data_dir"].rstrip("/"),
        python_version=agent["python_version"],
    )


def load(path: Path) -> Recipe:
    """Read and validate a recipe file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from exc
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text") from exc
    return parse(text, path.resolve())
