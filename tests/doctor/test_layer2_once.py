"""The layer-2 step reads and resets the spoofing counters: asked again after a timeout (a starved step gets a second
slice), it must not reset a second time, or the drops the first reset took are reported by no one (no root)."""

from __future__ import annotations

import asyncio
import time

from hearth.config import load_settings
from hearth.doctor import Parts
from hearth.doctor.context import Context, Step, run_steps
from hearth.doctor.host import _once
from hearth.doctor.report import Finding
from hearth.errors import Hop


async def test_a_starved_read_and_reset_is_awaited_again_not_redone() -> None:
    resets: list[int] = []

    async def take() -> dict[str, int]:  # an nft reset slower than the step's first slice: 5 drops taken
        resets.append(1)
        await asyncio.sleep(0.15)
        return {"arp_spoof": 5} if len(resets) == 1 else {"arp_spoof": 0}

    async def layer2(ctx: Context) -> Finding:
        taken = await _once(ctx, "layer 2 drops", take)
        return Finding.bad(f"{taken['arp_spoof']} spoofed", "end it") if taken["arp_spoof"] else Finding.good("nothing")

    settings = load_settings({"HEARTH_FABRIC_NETNS": "hearth-tunit0", "HEARTH_DATA_DIR": "/nonexistent"}, None)
    ctx = Context(Parts(settings), deadline=time.monotonic() + 5)
    (result,) = await run_steps(ctx, [Step("layer 2", Hop.ARP, layer2, 0.1)])
    assert result.ok is False and result.evidence == "5 spoofed" and resets == [1]
