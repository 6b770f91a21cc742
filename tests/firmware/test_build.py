"""mpy-cross compiles every firmware module for both boards into a bundle with a manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from firmware.micropython import build as build_script
from provisioning.relay import bundle


@pytest.mark.parametrize(("target", "arch"), [("esp32", "xtensawin"), ("rp2", "armv6m")])
def test_every_module_compiles(tmp_path: Path, target: str, arch: str) -> None:
    b = bundle.build(target, tmp_path)
    sources = {p.stem for p in bundle.sources()}
    compiled = {Path(f.path).stem for f in b.files if f.path.startswith("lib/brelay/")}
    assert compiled == sources and {f.path for f in b.files} >= {"main.py"}
    doc = json.loads((tmp_path / target / "manifest.json").read_text())
    assert doc["arch"] == arch and doc["total_bytes"] == b.total_bytes
    for f in b.files:
        blob = (tmp_path / target / f.path).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == f.sha256 and len(blob) == f.size
        if f.path.endswith(".mpy"):
            bundle.check_mpy(blob, arch, f.path)
    assert bundle.load(tmp_path / target).files == b.files


def test_build_script_prints_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_script.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "esp32:" in out and "rp2:" in out and "bytes of .mpy" in out


def test_a_syntax_error_fails_the_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "brelay").mkdir(parents=True)
    (src / "brelay" / "bad.py").write_text("def broken(:\n")
    (src / "main.py").write_text("")
    with pytest.raises(bundle.BundleError, match=r"mpy-cross failed on .*bad\.py"):
        bundle.build("rp2", tmp_path / "out", src)


def test_tampered_bundle_file_is_refused(tmp_path: Path) -> None:
    b = bundle.build("rp2", tmp_path)
    f = b.files[0]
    (b.root / f.path).write_bytes(b"tampered")
    with pytest.raises(bundle.BundleError, match="does not match"):
        b.data(f)


@pytest.mark.parametrize(
    ("blob", "message"),
    [(b"X\x06\x00\x1f", "not a .mpy"), (b"M\x05\x00\x1f", "need v6.3"),
     (b"M\x06\x26\x1f", "need v6.3"), (b"M\x06\x0f\x1f", "another architecture")],
)  # fmt: skip
def test_mpy_header_checks(blob: bytes, message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message):
        bundle.check_mpy(blob, "xtensawin", "x.mpy")


def test_old_mpy_cross_is_refused() -> None:
    with pytest.raises(bundle.BundleError, match="too old"):
        bundle.check_mpy_cross("MicroPython v1.22.2 on 2024-02-22; mpy-cross emitting mpy v6.2")
    bundle.check_mpy_cross(bundle.mpy_cross_version())
