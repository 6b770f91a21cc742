"""Durable file writes: a power cut at any instant leaves the old file or the whole new one.

The pattern is always the same: write a temp file, fsync it, rename it into place, fsync the
directory (and the parents of any directory created on the way). :func:`write_group` does it
for several files of one directory with a single directory fsync at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    _fsync(path, os.O_DIRECTORY)


def fsync_file(path: Path) -> Path:
    """fsync a file written earlier through another descriptor (Linux syncs the file's
    pages whichever descriptor wrote them); returns ``path``."""
    _fsync(path, os.O_CLOEXEC)
    return path


def makedirs(path: Path, mode: int = 0o700) -> list[Path]:
    """Create missing directories; returns the ones created (outermost first).

    Their parents are not fsynced here: a caller that needs the new directories to survive a
    power cut fsyncs ``d.parent`` for each (as :func:`write_group` does).
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)
            made.append(d)
    return made


def _write_all(fd: int, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    if sync:
        os.fsync(fd)


def write_temp(
    directory: Path, data: bytes | bytearray | memoryview, mode: int = 0o600, *, sync: bool = True
) -> Path:
    """A new temp file in ``directory`` holding ``data``, fsynced unless ``sync`` is False
    (for caches that are checked when read: after a power cut such a file may be empty or
    hold garbage under its final name); returns its path."""
    tmp = directory / f".{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data, sync=sync)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    return tmp


def install(
    pairs: Sequence[tuple[Path, Path]], *, exclusive: bool = False, sync: bool = True
) -> None:
    """Rename each fsynced temp file of ``(temp, target)`` into place, in order, then fsync
    the targets' directory (one directory for all) and any directory created on the way
    (skipped when ``sync`` is False). Temp files not installed (after an error) are removed."""
    if not pairs:
        return
    parent = pairs[0][1].parent
    if any(path.parent != parent for _, path in pairs):
        raise ValueError("install: all files must be in one directory")
    todo = list(pairs)
    try:
        made = makedirs(parent)
        while todo:
            tmp, path = todo[0]
            if exclusive:
                os.link(tmp, path)
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
            todo.pop(0)
    finally:
        for tmp, _ in todo:
            with contextlib.suppress(OSError):
                tmp.unlink()
    if not sync:
        return
    fsync_dir(parent)
    for d in made:
        fsync_dir(d.parent)


def write_group(
    items: Sequence[tuple[Path, bytes | bytearray | memoryview]],
    *,
    tmp_dir: Path | None = None,
    mode: int = 0o600,
    exclusive: bool = False,
) -> None:
    """Write every ``(path, data)`` durably; all paths must share one directory.

    Temp files go to ``tmp_dir`` (same filesystem) or beside the targets. All of them are
    written and fsynced before the first rename, renames follow in the order given, and the
    directory is fsynced once at the end: when this returns, every file is on the disk. With
    a ``tmp_dir`` that is missing nothing at all is created (not even a directory). With
    ``exclusive`` an existing target is never replaced (:class:`FileExistsError`).
    """
    if not items:
        return
    parent = items[0][0].parent
    if any(p.parent != parent for p, _ in items):
        raise ValueError("write_group: all files must be in one directory")
    made = makedirs(parent) if tmp_dir is None else []
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in items:
            temps.append((write_temp(tmp_dir or parent, data, mode), path))
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    install(temps, exclusive=exclusive)
    for d in made:
        fsync_dir(d.parent)


def write(
    path: Path,
    data: bytes | bytearray | memoryview,
    *,
    tmp_dir: Path | None = None,
    mode: int = 0o600,
    exclusive: bool = False,
) -> None:
    """Write one file durably (see :func:`write_group`)."""
    write_group([(path, data)], tmp_dir=tmp_dir, mode=mode, exclusive=exclusive)


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync it (and the directory when the file is new)."""
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
