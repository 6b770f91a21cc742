from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import Lab
from tests.support import require_binary, require_root


def require_lab() -> None:
    """Skip (fail in CI) unless namespaces, veth and nftables can be used here."""
    require_root("the lab's network namespaces")
    require_binary("ip", "iproute2")
    require_binary("nft", "nftables")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab, torn down after the test whatever happened."""
    require_lab()
    with Lab() as built:
        yield built
