"""A VM guest resolves through the fabric's DNS forwarder too: the agent-config document on its config drive names
the bridge address (`nameservers`), and the guest's PID 1 (hearth_boot.py) writes it to /etc/resolv.conf — the same
forwarder a netns sandbox's bound resolv.conf names (hearth.egress.policy.resolv_conf)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.egress.policy import resolv_conf
from hearth.guest import configdrive
from hearth.guest.hearth_boot import write_resolv
from tests.sandbox.specs import spec_for


def test_the_guest_writes_the_forwarder_from_its_config_drive(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings()
    doc = configdrive.decode(configdrive.encode(configdrive.document(spec_for(s, 3), s.callback_port)))
    assert doc["nameservers"] == [str(s.bridge_ip)]
    conf = tmp_path / "resolv.conf"
    write_resolv(doc, str(conf))
    assert conf.read_text() == resolv_conf(s)  # netns sandboxes and VM guests: one resolver, one text


def test_no_or_bad_nameservers_leave_the_file_alone(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("kept\n")
    cases: list[dict[str, Any]] = [{}, {"nameservers": []}, {"nameservers": ["evil;rm -rf /", 7]}]
    for cfg in cases:
        write_resolv(cfg, str(conf))
        assert conf.read_text() == "kept\n"
