from __future__ import annotations

from pathlib import Path

from provisioning import box


def test_hosts_entry_follows_the_new_hostname(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\traspberrypi\n")
    box.set_hosts_entry("bitchat-a1b2c3", hosts)
    lines = hosts.read_text().splitlines()
    assert "127.0.1.1\tbitchat-a1b2c3" in lines
    assert not any("raspberrypi" in line for line in lines)
    assert lines[:2] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost"]
    box.set_hosts_entry("bitchat-a1b2c3", hosts)
    assert hosts.read_text().count("127.0.1.1") == 1


def test_hosts_entry_when_the_file_is_missing(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    box.set_hosts_entry("box", hosts)
    assert hosts.read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tbox\n"
