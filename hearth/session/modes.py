"""Sign-in modes: how a person signs in, decided once per session at creation.

- `remote_browser`: the sandbox has a desktop (Xvfb, Openbox, x11vnc, Chromium); the provider's `loopback` flow opens
  the sign-in URL in that Chromium and the person signs in through the viewer.
- `direct`: no desktop at all (the agent and the CLI only); the person opens the URL — and enters the device code or
  pastes the code back — in their own browser. The flow is `device_code` when the provider declares it, else
  `paste_code` (`Provider.flow_for`).

`SigninMode.desktop` is the one place that says whether a sandbox gets a display; the sandbox spec and the readiness
gates both follow it.
"""

from __future__ import annotations

from enum import StrEnum


class SigninMode(StrEnum):
    REMOTE_BROWSER = "remote_browser"
    DIRECT = "direct"

    @property
    def desktop(self) -> bool:
        """Whether sandboxes of this mode run a desktop (display, VNC, Chromium)."""
        return self is SigninMode.REMOTE_BROWSER


class ModeError(ValueError):
    """An unknown mode, or one the provider cannot do; the message names the valid choices."""


def parse_mode(value: str) -> SigninMode:
    try:
        return SigninMode(value)
    except ValueError:
        valid = ", ".join(m.value for m in SigninMode)
        raise ModeError(f"unknown sign-in mode {value!r}; valid modes: {valid}") from None
