from __future__ import annotations

import contextlib
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning import recipe
from provisioning.errors import RecipeError
from tests.provisioning.conftest import write_recipe

EXAMPLE = Path(__file__).resolve().parents[2] / "images" / "recipe.example.toml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx2V1Hq2d7JQq1p7bq4dQxS2WwJ7nZs0mXoWk3yKp9f op@laptop"


def _minimal(**agent: str) -> str:
    extra = "".join(f'{k} = "{v}"\n' for k, v in agent.items())
    return (
        f'[user]\nssh_authorized_keys = ["{KEY}"]\n'
        f'[agent]\nenrollment_token = "t0123456789abcdef"\n{extra}'
    )


def test_example_recipe_is_valid_and_documents_every_key() -> None:
    parsed = recipe.load(EXAMPLE)
    assert parsed.wheelhouse is None  # auto
    text = EXAMPLE.read_text()
    doc = tomllib.loads(text)
    for section, keys in recipe.SCHEMA.items():
        assert section in doc, f"example lacks [{section}]"
        for key in keys:
            assert key in doc[section] or f"# {key} =" in text, f"example lacks {section}.{key}"


def test_full_recipe(tmp_path: Path, operator_key: Path, wheelhouse: Path) -> None:
    path = write_recipe(tmp_path / "r.toml", operator_key, wheelhouse)
    r = recipe.load(path)
    assert r.user == "operator" and r.ssh_keys[0].endswith("operator@laptop")
    assert r.wifi is not None and r.wifi.ssid == "Home \\ Net" and r.wifi.country == "DE"
    assert r.config == tmp_path / "node-config.toml"
    assert r.hostname == "bitchat-{serial}"
    assert "correct horse" not in repr(r)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bogus]\n", r"unknown section \[bogus\]"),
        ("[image]\nhostnme = 'x'\n" + _minimal(), r"image\.hostnme: unknown key"),
        ("[image]\nhostname = 5\n" + _minimal(), r"image\.hostname: must be a string, got int"),
        (
            '[wifi]\nssid = "a"\npsk = "12345678"\nhidden = "no"\n' + _minimal(),
            r"wifi\.hidden: must be true or false",
        ),
        ('[wifi]\nssid = "a"\n' + _minimal(), r"wifi\.psk: is required"),
        ('[wifi]\nssid = "a"\npsk = "short"\n' + _minimal(), r"wifi\.psk: must be 8-63"),
        ("[user]\nssh_authorized_keys = [1]\n", r"user\.ssh_authorized_keys: must be an array"),
        (
            "[user]\nssh_authorized_keys = ['not a key']\n[agent]\nenrollment_token='x'\n",
            r"ssh_authorized_keys\[0\]: is not an SSH public key",
        ),
        ("[agent]\nenrollment_token = 't0123456789abcdef'\n", "at least one SSH public key"),
        (_minimal().replace("t0123456789abcdef", "short"), r"agent\.enrollment_token"),
        ("[image]\nhostname = 'Bad_Name'\n" + _minimal(), r"image\.hostname: must be"),
        ("[image]\nfirst_boot = 'magic'\n" + _minimal(), r"image\.first_boot"),
        (_minimal(wheelhouse="/nonexistent/wh"), r"agent\.wheelhouse: /nonexistent/wh"),
        (_minimal(data_dir="relative"), r"agent\.data_dir"),
        ("x = = 1", "not valid TOML"),
        ("[user]\n", r"section \[agent\] is required"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message) as info:
        recipe.load(path)
    assert str(path.resolve()) in str(info.value)
    assert "\n" not in str(info.value)


toml_scalars = st.one_of(
    st.text(max_size=70), st.integers(), st.booleans(), st.lists(st.text(max_size=30), max_size=3)
)
keys = st.sampled_from(
    [k for sec in recipe.SCHEMA.values() for k in sec] + ["bogus", "name", "ssid"]
)
sections = st.sampled_from([*recipe.SCHEMA, "extra"])


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).encode("unicode_escape").decode().replace('"', '\\"') + '"'


@given(st.dictionaries(sections, st.dictionaries(keys, toml_scalars, max_size=5), max_size=5))
def test_generated_recipes_validate_or_fail_cleanly(doc: dict[str, dict[str, object]]) -> None:
    text = "".join(
        f"[{sec}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items())
        for sec, body in doc.items()
    )
    try:
        recipe.parse(text, Path("/fuzz/recipe.toml"))
    except RecipeError as exc:
        assert str(exc).startswith("/fuzz/recipe.toml")


@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    with contextlib.suppress(RecipeError):
        recipe.parse(text, Path("/fuzz/r.toml"))
