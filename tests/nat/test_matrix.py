"""The pairing matrix in the lab, one try per cell: direct where a direct path exists,
relayed otherwise, data both ways in every cell. (bench/nat.py runs 20 tries per cell.)"""

from __future__ import annotations

import pytest

from lab import Lab
from tests.lab.conftest import require_lab
from tests.nat.matrix import KINDS, Matrix, expected_path, run_cell
from tests.support import require_binary


@pytest.mark.slow
async def test_pairing_matrix_one_try_per_cell() -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    failures = []
    with Lab() as lab:
        matrix = Matrix(lab)
        await matrix.start_relay()
        try:
            for a in KINDS:
                for b in KINDS:
                    result = await run_cell(matrix, a, b)
                    want = expected_path(a, b)
                    print(f"{a:>21} -> {b:<21} {result.path or '-':8} ok={result.ok} "
                          f"ttfb={result.ttfb:.3f}s {result.error}")  # fmt: skip
                    if not result.ok or result.path != want:
                        failures.append(f"{a}->{b}: {result.path or result.error} (want {want})")
        finally:
            await matrix.stop_relay()
    assert not failures, failures
