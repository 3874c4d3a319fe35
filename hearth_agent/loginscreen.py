"""One CLI run's screen, read the way a person reads it: pure (no processes, no clock, no I/O; bytes and times in,
decisions out), so every rule below is testable with byte strings.

The PTY output feeds the rendered screen (hearth_agent/screen.py: pyte, which also answers the terminal queries a
CLI blocks on) and a scanner for OSC 8 hyperlink targets, the one thing pyte drops. `look(now, …)` is one look at
the screen: which of the flow's prompts to answer now (once a prompt stayed on screen for PROMPT_SETTLE — a TUI may
not take input before it finished drawing — and again when the screen ignored the answer for PROMPT_RETRY), the
sign-in URL (OSC 8 hyperlinks, then the rendered screen; the browser hook's spool is `offer`ed by the run), the
device code (`code_pattern`), whether the CLI waits for a pasted code (`code_prompt`) and whether it refused one.
The run (hearth_agent/loginrun.py) owns the process, the threads, the clock and every push.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hearth_agent.codes import scrub_codes
from hearth_agent.contract.redaction import redact
from hearth_agent.providerdef import FlowDef
from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)
from hearth_agent.screen import Screen

POLL = 0.1
PROMPT_SETTLE = 0.3  # a prompt is answered once it has been on screen this long
PROMPT_RETRY = 3.0  # an answer the screen did not react to is typed again after this long (twice at most)
MAX_RETRIES = 2
URL_QUIET = 1.0  # a URL at the very end of the screen is taken once the CLI was quiet this long
CODE_RESULT_QUIET = 0.5  # after a pasted code: the screen settled this long before reading the CLI's verdict
_TRAILING = ".,;:!?'\")]}>│┃|"
_ERROR_LINE = re.compile(
    r"(?i)\b(invalid|error|failed|failure|expired|wrong|denied|incorrect|try again|not accepted|wasn't accepted|"
    r"couldn't|could not)\b"
)
_OSC8 = re.compile(rb"\x1b\]8;[^;\x07\x1b]*;([^\x07\x1b]*)(?:\x07|\x1b\\)")
_OSC8_START = b"\x1b]8;"
_HOLD_MAX = 4096


class Links:
    """OSC 8 hyperlink targets in a byte stream however it is split into reads (a target is complete even when its
    visible text wraps; pyte drops OSC 8)."""

    def __init__(self) -> None:
        self._held = b""
        self.found: list[str] = []

    def feed(self, raw: bytes) -> None:
        data = self._held + raw
        self.found += [t.decode(errors="replace") for t in _OSC8.findall(data) if t]
        self._held = b""
        start = data.rfind(_OSC8_START)
        if start != -1 and _OSC8.match(data, start) is None:  # cut off by the end of this read
            self._held = data[start:][:_HOLD_MAX]
            return
        for k in range(len(_OSC8_START) - 1, 0, -1):  # the introducer itself cut off
            if data.endswith(_OSC8_START[:k]):
                self._held = data[-k:]
                return


@dataclass
class Look:
    """What one look at the screen found (the run acts on it)."""

    answers: list[int] = field(default_factory=list)  # prompts to type now (then `typed`)
    url_source: str | None = None  # the sign-in URL was captured now, from here ("terminal hyperlink", "screen")
    code_shown: bool = False  # the device code was read now
    refused: bool = False  # the CLI refused the pasted code and asks again (its words in `message`)
    new_url: bool = False  # … and shows a new sign-in URL


class LoginScreen:
    """Not thread-safe: the run holds its lock around every call. `codes` is the run's set of the person's codes
    (shown and pasted; it outlives a restarted CLI), `message` the CLI's last refusal (kept across a restart)."""

    def __init__(self, flow: FlowDef, now: float, codes: set[str] | None = None, message: str | None = None) -> None:
        n = len(flow.prompts)
        self.flow = flow
        self.screen = Screen()
        self.links = Links()
        self.codes: set[str] = codes if codes is not None else set()
        self.message = message
        self.last_output = now
        self.url: str | None = None
        self.user_code: str | None = None
        self.awaiting_code = False
        self.answered = 0  # prompts typed
        self._seen_since = [0.0] * n  # when each prompt's text appeared (0: not on screen)
        self._answered_at: list[tuple[float, int]] = [(0.0, -1)] * n  # (when, screen version) of the last answer
        self._answers = [0] * n
        self._baseline = [0] * n  # occurrences on screen when last answered
        self._retries = [0] * n
        self._code_sent: tuple[int, set[str]] | None = None  # (screen version, error lines shown) at submission

    # ---- input ----
    def feed(self, raw: bytes, now: float) -> list[str]:
        """PTY output; returns the answers to the terminal queries in it (to be written back to the CLI)."""
        self.last_output = now
        self.links.feed(raw)
        return self.screen.feed(raw)

    def offer(self, url: str) -> bool:
        """A URL seen somewhere (the browser hook, a hyperlink, the screen): the first http(s) URL containing
        `url_must_contain` is the sign-in URL. Whether it was taken now."""
        must = self.flow.url_must_contain
        if self.url is not None or not url.startswith(("http://", "https://")) or must not in url:
            return False
        if any(c.isspace() or ord(c) < 0x20 for c in url):
            return False
        self.url = url
        return True

    def take_code(self, code: str) -> bool:
        """The person's pasted code is about to be typed: whether the CLI waits for one (then it no longer does)."""
        if not self.awaiting_code:
            return False
        self.awaiting_code, self.message = False, None
        self._code_sent = (self.screen.version, set(self.error_lines()))
        self.codes.add(code)
        return True

    def typed(self, i: int, now: float, ok: bool) -> None:
        """Prompt `i`'s answer was written to the CLI (`ok`: all of it)."""
        if ok:
            self.answered += 1
            self._answers[i] += 1
        self._answered_at[i] = (now, self.screen.version)

    # ---- one look ----
    def needs_look(self, now: float, version: int) -> bool:
        """Whether a look can find anything new: the screen changed or is settling, a code's verdict or a prompt
        is pending, an ignored answer is due again."""
        return (
            self.screen.version != version
            or now - self.last_output < URL_QUIET + POLL
            or self._code_sent is not None
            or any(self._seen_since)
            or self.retry_due(now)
        )

    def look(self, now: float, cli_running: bool) -> Look:
        found = Look()
        visible = self.screen.visible()
        found.answers = self._due_prompts(now, visible)
        if self.url is None:
            for link in self.links.found:
                if self.offer(link):
                    found.url_source = "terminal hyperlink"
        if self.url is None:
            text, cursor = self.screen.joined(), self.screen.cursor_offset()
            quiet = now - self.last_output >= URL_QUIET
            for m in self.flow.url_pattern.finditer(text):
                complete = quiet or m.end() < cursor or text[m.end() :].strip()  # the CLI moved on
                if complete and self.offer(m.group(0).rstrip(_TRAILING)):
                    found.url_source = "screen"
        if self.flow.code_pattern is not None and self.user_code is None:
            shown = self.flow.code_pattern.search(self.screen.joined())
            if shown is not None and shown.group("code"):
                self.user_code = shown.group("code")
                self.codes.add(self.user_code)
                found.code_shown = True
        if self.flow.code_prompt is not None and self.url is not None:
            self._code_prompt(now, visible, cli_running, found)
        return found

    def _due_prompts(self, now: float, visible: str) -> list[int]:
        """A prompt is answered when a new occurrence of it is on screen (Ink redraws in place: same count; a
        line-based CLI asking again: one more), once it stayed PROMPT_SETTLE; typed again when the screen did not
        react at all for PROMPT_RETRY (a TUI that was not reading its input yet), at most twice."""
        due: list[int] = []
        for i, prompt in enumerate(self.flow.prompts):
            n = len(prompt.expect.findall(visible))
            if n == 0:
                self._seen_since[i], self._baseline[i] = 0.0, 0
                continue
            when, version = self._answered_at[i]
            if n <= self._baseline[i]:
                ignored = when and version == self.screen.version and now - when >= PROMPT_RETRY
                if ignored and self._retries[i] < MAX_RETRIES:
                    self._retries[i] += 1
                    due.append(i)
                continue
            if prompt.once and self._answers[i]:
                continue
            if not self._seen_since[i]:
                self._seen_since[i] = now
            if now - self._seen_since[i] >= PROMPT_SETTLE:
                self._baseline[i], self._seen_since[i], self._retries[i] = n, 0.0, 0
                due.append(i)
        return due

    def _code_prompt(self, now: float, visible: str, cli_running: bool, found: Look) -> None:
        assert self.flow.code_prompt is not None
        on_screen = self.flow.code_prompt.search(visible) is not None
        if self._code_sent is None:
            if on_screen and not self.awaiting_code and cli_running:
                self.awaiting_code = True
            return
        version, errors_before = self._code_sent
        if self.screen.version == version or now - self.last_output < CODE_RESULT_QUIET or not on_screen:
            return
        new_errors = [ln for ln in self.error_lines() if ln not in errors_before]
        if new_errors and cli_running:  # the CLI refused the code and asks again: its own words
            self.awaiting_code, self.message, self._code_sent = True, redact(new_errors[-1], 300), None
            found.refused = True
            found.new_url = self._latest_url()

    def _latest_url(self) -> bool:
        """A CLI asking again may show a new URL (Gemini starts a new PKCE request): the last one on screen counts."""
        latest = None
        for m in self.flow.url_pattern.finditer(self.screen.joined()):
            url = m.group(0).rstrip(_TRAILING)
            if self.flow.url_must_contain in url and not any(c.isspace() or ord(c) < 0x20 for c in url):
                latest = url
        if latest is None or latest == self.url:
            return False
        self.url = latest
        return True

    def refused_and_gone(self) -> bool:
        """After the CLI exited: it had refused a pasted code (its own words kept in `message`)."""
        if self._code_sent is not None:
            new = [ln for ln in self.error_lines() if ln not in self._code_sent[1]]
            if not new:
                return False
            self.message = redact(new[-1], 300)
        return self.message is not None

    # ---- reading ----
    def error_lines(self) -> list[str]:
        """Lines (wrapped rows joined) that read like an error: what the CLI says when it refuses a code."""
        return [ln.strip() for ln in self.screen.joined().splitlines() if _ERROR_LINE.search(ln)]

    def settling(self, now: float) -> bool:
        """Something is still changing (recent output, a prompt on its way to being answered)."""
        return now - self.last_output < URL_QUIET + POLL or any(self._seen_since)

    def retry_deadlines(self) -> list[float]:
        """When each answered prompt the screen ignored is due again."""
        return [
            when + PROMPT_RETRY
            for (when, seen), tries in zip(self._answered_at, self._retries, strict=True)
            if when and tries < MAX_RETRIES and seen == self.screen.version
        ]

    def retry_due(self, now: float) -> bool:
        return any(now >= due for due in self.retry_deadlines())

    def step(self) -> str:
        """What the sign-in waits for (in a failure reason)."""
        if self.url is None:
            return "the sign-in URL"
        if self.flow.name == "paste_code" and self._code_sent is None:
            return "the pasted code"
        return "the credentials (sign-in not finished)"

    def scrub(self, text: str) -> str:
        """`text` without the person's sign-in codes (hearth_agent/codes.py): for reasons, events and the log."""
        pattern = self.flow.code_pattern
        patterns: Iterable[re.Pattern[str]] = (pattern,) if pattern is not None else ()
        return scrub_codes(text, self.codes, patterns)

    def tail(self, n: int = 12) -> str:
        """The last rows, redacted and without codes (the status's `screen_tail`)."""
        return "\n".join(self.scrub(redact(line, 300)) for line in self.screen.tail(n))

    def last_lines(self, n: int = 3) -> str:
        lines = self.screen.tail(n)
        return redact(" | ".join(lines), 300) if lines else "no output"

    def prompt(self) -> dict[str, Any] | None:
        """What the person must see (the `signin` push), once there is a URL (and the device code, if any)."""
        if self.url is None or (self.flow.code_pattern is not None and self.user_code is None):
            return None
        return {
            "flow": self.flow.name,
            "url": self.url,
            "user_code": self.user_code,
            "awaiting_code": self.awaiting_code,
            "message": self.message,
        }
