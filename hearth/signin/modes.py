"""Sign-in modes (`SigninMode`, defined with the provider schema, which derives each provider's modes from its
flows): how a person signs in, decided once per session at creation.

- `remote_browser`: the sandbox has a desktop (Xvfb, Openbox, x11vnc, Chromium); the provider's `loopback` flow opens
  the sign-in URL in that Chromium and the person signs in through the viewer.
- `direct`: no desktop at all (the agent and the CLI only); the person opens the URL — and enters the device code or
  pastes the code back — in their own browser (`device_code` flow when declared, else `paste_code`).

`has_desktop` (hearth/session/view.py) is the one place that says whether a sandbox gets a display; the sandbox spec
and the readiness gates both follow it (`SandboxSpec.desktop`).
"""

from __future__ import annotations

from hearth.providers.model import Provider, SigninMode, UnsupportedMode
from hearth.session.view import has_desktop

__all__ = ["ModeError", "SigninMode", "choose_mode", "has_desktop", "parse_mode"]


class ModeError(ValueError):
    """An unknown mode, or one the provider cannot do; the message names the valid choices."""


def parse_mode(value: str) -> SigninMode:
    try:
        return SigninMode(value)
    except ValueError:
        valid = ", ".join(m.value for m in SigninMode)
        raise ModeError(f"unknown sign-in mode {value!r}; valid modes: {valid}") from None


def choose_mode(default: str, provider: Provider | None, requested: str | None) -> SigninMode:
    """The session's mode: the request's, else the deployment default (HEARTH_SIGNIN_MODE); it must be one the
    provider can do. ModeError names the valid modes (all of them, or the provider's)."""
    mode = parse_mode(requested if requested is not None else default)
    if provider is None:
        if mode is SigninMode.DIRECT:
            raise ModeError("direct mode signs in to a provider's CLI: give a provider, or use mode remote_browser")
        return mode
    try:
        provider.flow_for(mode)
    except UnsupportedMode as exc:
        source = "" if requested is not None else " (the default, HEARTH_SIGNIN_MODE)"
        raise ModeError(f"{exc}{source}") from None
    return mode
