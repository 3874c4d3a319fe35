"""The sign-in kit of the tests: bench/signinkit.py (it lives in bench/, which never imports from tests/)."""

from __future__ import annotations

from bench.signinkit import (
    BRIDGE_IP,
    approve_and_read_code,
    browse,
    idp_env,
    issuer,
    running_idp,
    start_idp,
)

__all__ = ["BRIDGE_IP", "approve_and_read_code", "browse", "idp_env", "issuer", "running_idp", "start_idp"]
