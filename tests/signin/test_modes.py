"""Choosing a session's sign-in mode: request, else the deployment default; only modes the provider can do."""

from __future__ import annotations

import pytest

from hearth.providers.model import FlowName
from hearth.providers.registry import load
from hearth.signin.modes import ModeError, SigninMode, choose_mode, has_desktop


def test_only_remote_browser_sessions_have_a_desktop() -> None:
    assert has_desktop(SigninMode.REMOTE_BROWSER)
    assert not has_desktop(SigninMode.DIRECT)


def test_the_request_overrides_the_default_and_both_are_checked() -> None:
    example = load()["example"]
    assert choose_mode("remote_browser", example, None) is SigninMode.REMOTE_BROWSER
    assert choose_mode("remote_browser", example, "direct") is SigninMode.DIRECT
    assert choose_mode("direct", example, None) is SigninMode.DIRECT
    assert choose_mode("direct", None, "remote_browser") is SigninMode.REMOTE_BROWSER
    with pytest.raises(ModeError, match="valid modes: remote_browser, direct"):
        choose_mode("remote_browser", example, "carrier_pigeon")
    with pytest.raises(ModeError, match="give a provider"):
        choose_mode("direct", None, None)


def test_a_mode_the_provider_cannot_do_names_the_modes_it_can() -> None:
    example = load()["example"]
    loopback_only = example.model_copy(update={"flows": {FlowName.LOOPBACK: example.flows[FlowName.LOOPBACK]}})
    with pytest.raises(ModeError, match=r"cannot sign in in mode 'direct'; it can: remote_browser$"):
        choose_mode("remote_browser", loopback_only, "direct")
    with pytest.raises(ModeError, match=r"it can: remote_browser \(the default, HEARTH_SIGNIN_MODE\)"):
        choose_mode("direct", loopback_only, None)
