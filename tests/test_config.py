from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import config
from node.errors import ConfigError


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "none.toml") == config.Config()


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[network]\nlisten = "[::1]:7000"\nbootstrap = ["198.18.0.1:7700"]\nmax_sessions = 5\n'
        '[node]\nname = "attic"\n'
    )
    cfg = config.load(path)
    assert cfg.network.listen == "[::1]:7000"
    assert cfg.network.bootstrap == ("198.18.0.1:7700",)
    assert cfg.network.max_sessions == 5
    assert cfg.node.name == "attic"
    assert cfg.web == config.WebSection()


def test_override_validates() -> None:
    cfg = config.override(config.Config(), "web", listen="127.0.0.1:0")
    assert cfg.web.listen == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"command line: \[web\] listen"):
        config.override(cfg, "web", listen="127.0.0.1")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0.0.0.0:7700", True),
        ("[::]:1", True),
        ("localhost:80", True),
        ("box-1.local:80", True),
        (":80", False),
        ("1.2.3.4", False),
        ("1.2.3.4:-1", False),
        ("1.2.3.4:65536", False),
        ("bad host:1", False),
    ],
)
def test_parse_hostport(text: str, ok: bool) -> None:
    if ok:
        config.parse_hostport(text)
    else:
        with pytest.raises(ValueError):
            config.parse_hostport(text)


def test_default_file_round_trips() -> None:
    """Every section appears; every key is commented out, so the file means the defaults."""
    parsed = tomllib.loads(config.render_default())
    sections = {f.name for f in dataclasses.fields(config.Config)}
    assert parsed == {name: {} for name in sections}


toml_scalars = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=3),
)  # fmt: skip


@given(
    st.dictionaries(
        st.sampled_from(["node", "network", "web", "other"]),
        st.dictionaries(st.text(min_size=1, max_size=12), toml_scalars, max_size=4),
        max_size=3,
    )
)
def test_from_dict_accepts_or_says_why(data: dict[str, dict[str, object]]) -> None:
    """Any document either builds a Config or raises ConfigError naming the source."""
    try:
        cfg = config.from_dict(data, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml: ")
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, config.Config)


@given(st.binary(max_size=200))
def test_load_never_crashes_on_garbage(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_bytes(raw)
    try:
        config.load(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
