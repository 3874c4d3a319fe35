"""The session core's one `explain` (hearth/session/boots.py) and the records' scrub, without a sandbox: a failure
reason names the doctor's first broken hop when the doctor finds one, else the gate's own words — also when the
doctor fails or has nothing to say; a service built without the sign-in's codes still never stores a code-shaped
string."""

from __future__ import annotations

from collections.abc import Callable

from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.sandbox.netns import NetnsDriver
from hearth.session.boots import Diagnose
from hearth.store.db import Database
from tests.session.servicekit import session_service

GATE = HearthError(Hop.AGENT, "[agent] no answer within 30s")


async def explained(settings: Settings, diagnose: Diagnose | None) -> str:
    db = Database(settings.db_url)
    try:
        svc = session_service(settings, db, NetnsDriver(settings), diagnose=diagnose)
        return await svc.boots.explain("s-1", GATE)
    finally:
        db.dispose()


async def test_the_doctors_verdict_names_the_hop(make_settings: Callable[..., Settings]) -> None:
    async def found(session_id: str) -> HearthError | None:
        return HearthError(Hop.VNC, f"{session_id}: connection refused on :5900")

    assert await explained(make_settings(), found) == "[vnc] s-1: connection refused on :5900"


async def test_without_a_verdict_the_gate_speaks(make_settings: Callable[..., Settings]) -> None:
    async def nothing(session_id: str) -> HearthError | None:
        return None

    async def broken(session_id: str) -> HearthError | None:
        raise RuntimeError("the doctor itself failed")

    s = make_settings()
    assert await explained(s, nothing) == GATE.reason
    assert await explained(s, broken) == GATE.reason
    assert await explained(s, None) == GATE.reason


async def test_a_service_without_the_signins_codes_scrubs_code_shapes(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    db = Database(s.db_url)
    try:
        svc = session_service(s, db, NetnsDriver(s))
        assert svc.records.codes.scrub("s-1", "enter WDJB-MJHT at the page") == "enter [code] at the page"
        assert svc.records.codes.scrub("s-1", None) is None
    finally:
        db.dispose()
