"""Real wheels of this project built in-process (zip + metadata), so tests need no network."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_ENTRY_POINTS = (
    "[console_scripts]\nbitchat-node = node.cli:main\nbitchat-fleet = provisioning.cli:main\n"
)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(version: str, dest_dir: Path, requires: tuple[str, ...] = ()) -> Path:
    """A py3-none-any wheel of the node and provisioning packages, reporting ``version``;
    ``requires`` are its Requires-Dist lines."""
    dist_info = f"bitchat_node-{version}.dist-info"
    files: dict[str, bytes] = {}
    for pkg in ("node", "provisioning"):
        for path in sorted((REPO / pkg).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(REPO).as_posix()] = path.read_bytes()
    init = files["node/__init__.py"].decode()
    files["node/__init__.py"] = re.sub(
        r'__version__ = "[^"]*"', f'__version__ = "{version}"', init
    ).encode()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: bitchat-node\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist_info}/entry_points.txt"] = _ENTRY_POINTS.encode()
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / f"bitchat_node-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return wheel
