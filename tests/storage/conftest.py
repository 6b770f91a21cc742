from __future__ import annotations

from pathlib import Path

FAST = """
[storage]
audit_interval = 1.0
pay_interval = 1.0
disk_check_interval = 1.0
contract_days = 1.0
price_per_gib_month = 100000.0
"""


def fast_config(data_dir: Path, extra: str = "") -> None:
    """Short audit/payment/disk-check intervals so tests see them happen."""
    (data_dir / "config.toml").write_text(FAST + extra)
