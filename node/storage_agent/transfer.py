"""``put`` and ``get`` for the command line: encrypt here, store through a running agent.

The key never leaves this process: the agent receives ciphertext and answers with the id of
the file's placement record; the file id printed to the user is that record id plus the key.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from node.storage_agent import client
from node.storage_agent.errors import ProofError, StorageError

PIECE = 256 * 1024


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _fail(url: str, exc: Exception) -> StorageError:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, OSError, AttributeError):
            detail = ""
        return StorageError(f"{url} answered HTTP {exc.code}: {detail or exc.reason}")
    reason = getattr(exc, "reason", exc)
    return StorageError(f"cannot reach the agent at {url}: {reason}")


def put_file(api: str, path: Path, token: str | None, timeout: float = 600.0) -> str:
    """Encrypt ``path``, store it through the agent at ``api``; returns the file id."""
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    key = client.new_key()

    def blocks() -> Iterator[bytes]:
        while block := fh.read(client.BLOCK):
            yield block

    url = api.rstrip("/") + "/api/storage/files"
    headers = _headers(token)
    headers["Content-Length"] = str(client.ciphertext_size(size))
    req = urllib.request.Request(
        url, data=client.encrypt_blocks(key, blocks()), headers=headers, method="POST"
    )
    try:
        with fh, urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, OSError) as exc:
        raise _fail(url, exc) from exc
    except ValueError as exc:
        raise StorageError(f"{url} did not answer JSON") from exc
    try:
        record = bytes.fromhex(doc["record"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{url} answered without a record id") from exc
    return client.format_file_id(record, key)


def get_file(api: str, file_id: str, out: Path, token: str | None, timeout: float = 600.0) -> int:
    """Fetch, check and decrypt a file into ``out``; returns its size.

    The plaintext goes to a temporary file beside ``out`` and is renamed only once every
    block has been authenticated, so a failed download never leaves a partial file.
    """
    try:
        record, key = client.parse_file_id(file_id)
    except ValueError as exc:
        raise StorageError(f"bad file id: {exc}") from exc
    url = api.rstrip("/") + f"/api/storage/files/{record.hex()}"
    req = urllib.request.Request(url, headers=_headers(token))
    tmp = out.with_name(f".{out.name}.part")
    dec = client.Decryptor(key)
    written = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, tmp.open("wb") as fh:
            while piece := resp.read(PIECE):
                plain = dec.feed(piece)
                fh.write(plain)
                written += len(plain)
            plain = dec.finish()
            fh.write(plain)
            written += len(plain)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except urllib.error.URLError as exc:
        tmp.unlink(missing_ok=True)
        raise _fail(url, exc) from exc
    except http.client.HTTPException as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"download from {url} was cut short ({exc!r}); try again") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"download of {url} into {out} failed: {exc}") from exc
    except (ProofError, StorageError):
        tmp.unlink(missing_ok=True)
        raise
    return written
