"""A session service built on its own (no controller): its sandbox manager seals with a key ring in memory, so a test
never creates key files. Its viewers are a real gauge (hearth/gateway/gauge.py) the test may add to."""

from __future__ import annotations

import secrets
from typing import Any

from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.gateway.gauge import ViewerGauge
from hearth.lifecycle.manager import SandboxManager
from hearth.sandbox.base import Driver
from hearth.session.service import SessionService
from hearth.store.db import Database
from hearth.vault.keys import KeyRing, MasterKey


def memory_ring() -> KeyRing:
    return KeyRing([MasterKey.of(secrets.token_bytes(32))], None)


def session_service(settings: Settings, db: Database, driver: Driver, **kwargs: Any) -> SessionService:
    """`kwargs`: SessionService's keyword arguments (providers, diagnose, hooks…); `viewers` defaults to a gauge."""
    sandboxes = SandboxManager(settings, db, driver, Ipam(settings, db), memory_ring())
    kwargs.setdefault("viewers", ViewerGauge())
    return SessionService(settings, db, driver, sandboxes, **kwargs)
