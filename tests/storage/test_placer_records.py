"""The placer's own records on the data disk: pending releases survive a restart, and any
bytes in its files load without an exception (a damaged record is skipped and logged)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.events import EventLog
from node.identity import Identity
from node.storage_agent.contracts import Contract
from node.storage_agent.network import Peer
from node.storage_agent.placer import RELEASES, PendingRelease, Placer
from node.storage_agent.store import chunk_id

CLIENT = Identity.generate()
NODE = Identity.generate()


class NoNetwork:
    async def request(self, *_args: object, **_kw: object) -> object:
        raise AssertionError("loading records must not touch the network")


def placer(root: Path) -> Placer:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return Placer(
        ident=CLIENT,
        dialer=NoNetwork(),
        peers=lambda: list[Peer](),
        files_dir=root / "files",
        tmp_dir=root / "tmp",
        events=EventLog(),
    )


def contract(end: float) -> Contract:
    data = b"share"
    return Contract(
        chunk_id=chunk_id(data), root=bytes(32), size=len(data), price=1,
        start=int(end) - 100, end=int(end), client_key=CLIENT.public_key,
        node_key=NODE.public_key,
    ).signed_by_client(CLIENT)  # fmt: skip


def test_pending_releases_are_saved_and_loaded_again(tmp_path: Path) -> None:
    first = placer(tmp_path)
    first.load()
    c = contract(time.time() + 3600)
    first.releases[c.id] = PendingRelease(c, ("127.0.0.1", 4000))
    first._save_releases()
    again = placer(tmp_path)
    again.load()
    assert again.releases == first.releases
    assert again.status()["releases_pending"] == 1


JSON_DOCS = st.recursive(
    st.none() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["contract", "address", "record", "placements", "seq"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
).map(lambda doc: json.dumps(doc).encode())
BYTES_OR_JSON = st.one_of(st.binary(max_size=300), JSON_DOCS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(releases=BYTES_OR_JSON, record=BYTES_OR_JSON, channels=BYTES_OR_JSON)
def test_any_bytes_in_the_records_load_without_an_exception(
    tmp_path: Path, releases: bytes, record: bytes, channels: bytes
) -> None:
    p = placer(tmp_path)
    p.files_dir.mkdir(parents=True, exist_ok=True)
    (p.files_dir / RELEASES).write_bytes(releases)
    (p.files_dir / f"{'ab' * 32}.json").write_bytes(record)
    (p.files_dir / "channels.json").write_bytes(channels)
    p.load()
    assert not p.files  # nothing readable was a file record
    assert all(isinstance(r.contract, Contract) for r in p.releases.values())
