from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import require_binary, require_root


@pytest.fixture
def lab() -> Iterator[object]:
    """A fresh lab (network namespaces, emulated links), torn down after the test."""
    require_root("the lab's network namespaces")
    require_binary("ip", "iproute2")
    require_binary("nft", "nftables")
    from lab import Lab

    with Lab() as built:
        yield built
