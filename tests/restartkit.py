"""The restart kit of the tests: bench/restartkit.py (it lives in bench/, which never imports from tests/)."""

from __future__ import annotations

from bench.restartkit import (
    IDP_PORT,
    Controller,
    Fleet,
    approve_device,
    assert_nothing_left,
    controller_env,
    kill_leftovers,
    remove_everything,
    sandbox_pids,
    start_fleet,
    start_idp,
    viewer_frames,
    wait_body,
    wait_prompt,
)

__all__ = [
    "IDP_PORT",
    "Controller",
    "Fleet",
    "approve_device",
    "assert_nothing_left",
    "controller_env",
    "kill_leftovers",
    "remove_everything",
    "sandbox_pids",
    "start_fleet",
    "start_idp",
    "viewer_frames",
    "wait_body",
    "wait_prompt",
]
