"""Every string a person reads about a sign-in, in one place: the viewer page (its status stream carries them) and
the API's `message` field say the same words.

No raw state names, internal tags ("[agent]"), exit codes or file paths ever appear here: those stay in the reason,
the events and the page's Details. Words follow the stepper a person sees: preparing → sign in → saving → done.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from hearth.session.states import Status

if TYPE_CHECKING:
    from hearth.session.view import SessionView
    from hearth.signin.prompts import SigninPrompt


class Step(StrEnum):
    """The stepper's stages (the page highlights the current one)."""

    PREPARING = "preparing"
    SIGN_IN = "sign_in"
    SAVING = "saving"
    DONE = "done"


STEP_LABELS: dict[Step, str] = {
    Step.PREPARING: "Preparing",
    Step.SIGN_IN: "Sign in",
    Step.SAVING: "Saving",
    Step.DONE: "Done",
}

# Whose account the person signs in to, when it differs from the CLI's name ("Open the Claude sign-in page").
ACCOUNT_NAMES: dict[str, str] = {
    "claude_code": "Claude",
    "codex": "ChatGPT",
    "gemini_cli": "Google",
    "example": "Example",
}

# Fixed strings of the page (buttons, labels); the page reads them from the JSON the server embeds in it.
UI: dict[str, str] = {
    "details": "Details",
    "copy_link": "Copy link",
    "copy_code": "Copy code",
    "copied": "Copied",
    "new_link": "New link",
    "copy_failed": "Select the text and copy it",
    "link_label": "Or copy this link:",
    "code_label": "Enter this code when asked:",
    "qr_caption": "On your phone? Scan this code with its camera to sign in there.",
    "paste_label": "Paste the code you are shown after signing in:",
    "paste_submit": "Continue",
    "code_checking": "Checking your code…",
    "keyboard": "Keyboard",
    "keyboard_hint": "Type here to type into the sign-in page",
    "paste": "Paste",
    "paste_prompt": "Paste text to send to the sign-in page",
    "send": "Send",
    "return": "Back to the app",
    "return_in": "Taking you back in {seconds} s…",
    "stepper": "Sign-in progress",
    "step_current": "current step",
    "step_done": "done",
    "reconnecting": "Connection lost, reconnecting…",
    "view_only": "You are watching; only the person signing in can type.",
}

# What ended the sign-in, keyed by the failure's hop (H5 adds hop-specific messages); "{name}" is the account name.
FAILURES: dict[str, str] = {
    "": "Signing in to {name} did not work. Please try again.",
    # the provider's page cannot load inside the sandbox (hearth_agent/pageprobe.py): not the person's Wi-Fi
    "dns": "The {name} sign-in page cannot be reached from here. Please try again later.",
    "egress": "The {name} sign-in page cannot be reached from here. Please try again later.",
    "tls": "The {name} sign-in page cannot be reached from here. Please try again later.",
    # the upstream egress proxy (HEARTH_EGRESS_PROXY) is down or refuses hearth's credentials: the service's fault
    "proxy": "This service cannot connect to {name} right now. Please try again later.",
}


def refused_code(renewed: bool) -> str:
    """A pasted code the provider's CLI did not accept (its own words stay in Details and the events)."""
    if renewed:
        return "That code was not accepted. A new sign-in link is ready — open it and sign in again."
    return "That code was not accepted. Open the sign-in page again, sign in, and paste the new code it shows you."


def account_name(provider: str | None, display_name: str | None) -> str:
    """The name a person knows the account by."""
    if provider and provider in ACCOUNT_NAMES:
        return ACCOUNT_NAMES[provider]
    return display_name or "your account"


def open_button(name: str) -> str:
    return f"Open the {name} sign-in page"


def step_of(status: Status) -> Step | None:
    """The stepper's stage for a status; None when the sign-in ended without finishing (failed, cancelled,
    expired)."""
    if status in (Status.QUEUED, Status.STARTING):
        return Step.PREPARING
    if status in (Status.READY, Status.AWAITING_USER):
        return Step.SIGN_IN
    if status in (Status.CREDENTIALS_CAPTURED, Status.DELIVERED):
        return Step.SAVING
    if status is Status.COMPLETED:
        return Step.DONE
    return None


def step_for(status: Status, *, mode: str, has_link: bool, watching: bool = False) -> Step | None:
    """The stepper's stage as the page shows it: in direct mode signing in begins once the link is there (until
    then the words say "Getting your sign-in link…", and the stepper still says Preparing)."""
    step = step_of(status)
    if step is Step.SIGN_IN and mode == "direct" and not has_link and not watching:
        return Step.PREPARING
    return step


@dataclass(frozen=True)
class Words:
    """What the page's headline and status line say (the status line is the aria-live region)."""

    headline: str
    message: str
    next_step: str | None = None  # the done page: what to do now


def failure(name: str, hop: str | None) -> str:
    return FAILURES.get(hop or "", FAILURES[""]).format(name=name)


def words(
    status: Status,
    *,
    mode: str,
    name: str | None,
    has_link: bool = False,
    user_code: bool = False,
    awaiting_code: bool = False,
    watching: bool = False,
    queue_position: int | None = None,
    hop: str | None = None,
    code_refused: bool = False,
    link_renewed: bool = False,
) -> Words:
    """The words for one moment of a session. `name` is the account name (None: a session without a provider, a
    plain remote browser)."""
    if name is None:
        return _plain_browser(status, queue_position)
    if status is Status.COMPLETED:
        return Words(
            f"You are signed in to {name}",
            f"Your {name} sign-in is saved in your workspace.",
            "You can close this page and go back to your workspace: the command line is ready to use.",
        )
    if status in (Status.CREDENTIALS_CAPTURED, Status.DELIVERED):
        return Words(f"Saving your {name} sign-in", f"Signed in to {name}. Saving it to your workspace…")
    if status is Status.FAILED:
        return Words(f"Signing in to {name} did not work", failure(name, hop))
    if status is Status.CANCELLED:
        return Words("This sign-in was stopped", "This sign-in was stopped before it finished. You can start again.")
    if status is Status.EXPIRED:
        return Words("This sign-in timed out", "This sign-in took too long and was closed. You can start again.")
    if status is Status.QUEUED:
        ahead = f" ({queue_position} ahead of you)" if queue_position and queue_position > 1 else ""
        return Words(f"Preparing your {name} sign-in", f"Waiting for a free place{ahead}…")
    if status is Status.STARTING:
        return Words(f"Preparing your {name} sign-in", "Getting things ready. This takes a few seconds…")
    if watching:
        return Words(f"{name} sign-in in progress", "The person signing in is doing it now.")
    if mode == "direct":
        if not has_link:
            return Words(f"Preparing your {name} sign-in", "Getting your sign-in link…")
        if code_refused:
            return Words(f"Sign in to {name}", refused_code(link_renewed))
        if awaiting_code:
            return Words(
                f"Sign in to {name}",
                f"Open the {name} sign-in page, sign in, then paste the code it shows you here.",
            )
        if user_code:
            return Words(f"Sign in to {name}", f"Open the {name} sign-in page and enter the code shown here.")
        return Words(f"Sign in to {name}", f"Open the {name} sign-in page and sign in. This page follows along.")
    return Words(f"Sign in to {name}", f"Sign in to {name} in the window below.")


def _plain_browser(status: Status, queue_position: int | None) -> Words:
    if status.booting:
        ahead = f" ({queue_position} ahead of you)" if queue_position and queue_position > 1 else ""
        return Words("Starting your browser", f"Starting your browser{ahead}…")
    if status.terminal:
        if status is Status.FAILED:
            return Words("The browser stopped", "The browser could not be started or stopped working.")
        return Words("This session has ended", "This session has ended.")
    return Words("Your remote browser", "Your browser is ready.")


def for_session(
    view: SessionView,
    display_name: str | None,
    prompt: SigninPrompt | None,
    *,
    watching: bool = False,
    queue_position: int | None = None,
) -> Words:
    """The words for a session as the API and the page see it (`prompt`: the direct-mode link and code, if any)."""
    return words(
        view.status,
        mode=view.mode.value,
        name=account_name(view.provider, display_name) if view.provider else None,
        has_link=prompt is not None,
        user_code=bool(prompt and prompt.user_code),
        awaiting_code=bool(prompt and prompt.awaiting_code),
        watching=watching,
        queue_position=queue_position,
        hop=view.hop,
        code_refused=bool(prompt and prompt.detail),
        link_renewed=bool(prompt and prompt.renewed),
    )
