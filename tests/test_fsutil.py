"""Durable writes on real files: whole files in place, nothing left behind, no overwrite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node import fsutil


def test_write_group_puts_every_file_in_place_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    fsutil.write_group([(target / "one", b"1" * 5000), (target / "two", b"2")], mode=0o640)
    assert (target / "one").read_bytes() == b"1" * 5000
    assert (target / "two").read_bytes() == b"2"
    assert (target / "one").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in target.iterdir()) == ["one", "two"]
    fsutil.write(target / "one", b"new")
    assert (target / "one").read_bytes() == b"new"


def test_temp_dir_missing_writes_nothing_at_all(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsutil.write(tmp_path / "new" / "file", b"x", tmp_dir=tmp_path / "gone")
    assert list(tmp_path.iterdir()) == []


def test_exclusive_never_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "key"
    fsutil.write(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        fsutil.write(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["key"]


def test_files_of_several_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one directory"):
        fsutil.write_group([(tmp_path / "a" / "x", b""), (tmp_path / "b" / "y", b"")])


def test_append(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fsutil.append(path, b"one\n")
    fsutil.append(path, b"two\n")
    assert path.read_bytes() == b"one\ntwo\n"
