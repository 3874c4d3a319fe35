"""The sign-in's screen reader (hearth_agent/loginscreen.py) with byte strings and made-up times: no process, no PTY,
no clock. The run that drives a real CLI with it is tested in test_signin.py and test_loginrun.py."""

from __future__ import annotations

from typing import Any

from hearth_agent.loginscreen import CODE_RESULT_QUIET, PROMPT_RETRY, PROMPT_SETTLE, URL_QUIET, Links, LoginScreen
from hearth_agent.providerdef import FlowDef, parse_flow

STREAM = (
    b"\x1b[?25l\x1b[2J\x1b[HPress \x1b[1mEnter\x1b[0m\x1b[1Cto continue\r\n\x1b]0;a title\x07"
    b"\x1b]8;;https://a.test/oauth/authorize?x=1\x1b\\click here\x1b]8;;\x1b\\ caf\xc3\xa9 \x1b[6n\x1b[c"
    b"\x1bP1$r\x1b\\\x1b(B end\r\n"
)


def flow(name: str = "loopback", **extra: Any) -> FlowDef:
    return parse_flow(name, {"command": ["cli"], **extra})


def test_links_and_query_answers_are_the_same_however_the_output_is_split() -> None:
    whole = LoginScreen(flow(), 0.0)
    replies = whole.feed(STREAM, 0.0)
    assert whole.links.found == ["https://a.test/oauth/authorize?x=1"]  # pyte drops OSC 8: the scanner keeps it
    assert replies == ["\x1b[1;1R", "\x1b[?1;2c"]  # cursor position, device attributes (Codex waits for them)
    assert "Press Enter to continue" in whole.screen.visible() and "click here café" in whole.screen.visible()
    assert "title" not in whole.screen.visible()
    for step in (1, 2, 3, 5, 8):
        split = LoginScreen(flow(), 0.0)
        got: list[str] = []
        for i in range(0, len(STREAM), step):
            got += split.feed(STREAM[i : i + step], 0.0)
        assert (split.links.found, got, split.screen.visible()) == (whole.links.found, replies, whole.screen.visible())


def test_a_link_scanner_holds_only_a_cut_off_introducer() -> None:
    links = Links()
    links.feed(b"text \x1b]")
    links.feed(b"8;id=1;https://x.test/a")
    assert links.found == []
    links.feed(b"?b=2\x07shown\x1b]8;;\x07")
    assert links.found == ["https://x.test/a?b=2"]  # the closing OSC 8 (empty target) is no link
    links.feed(b"\x1b]0;title\x07")
    assert links.found == ["https://x.test/a?b=2"]


def test_a_prompt_is_answered_once_it_settled_and_again_when_ignored() -> None:
    t = 10.0  # a monotonic clock's reading (0 means "never" to the reader)
    s = LoginScreen(flow(prompts=[{"expect": r"Continue\? \[Y/n\]", "send": "y\\r"}]), t)
    s.feed(b"Continue? [Y/n] ", t)
    assert s.look(t, True).answers == []  # just drawn: a TUI may not read yet
    assert s.look(t + PROMPT_SETTLE / 2, True).answers == []
    t += PROMPT_SETTLE
    assert s.look(t, True).answers == [0]
    s.typed(0, t, True)
    assert s.answered == 1 and s.look(t + 0.1, True).answers == []
    due = t + PROMPT_RETRY
    assert s.retry_deadlines() == [due] and not s.retry_due(due - 0.01) and s.retry_due(due)
    assert s.look(due, True).answers == [0]  # the screen did not react at all: typed again
    s.typed(0, due, True)
    s.feed(b"\r\nok\r\n", due + 0.1)  # it reacted: no more retries, and `once` answers no new occurrence
    assert s.retry_deadlines() == []
    s.feed(b"Continue? [Y/n] ", due + 0.2)
    assert s.look(due + 5, True).answers == [] and s.answered == 2


def test_the_url_is_taken_when_drawn_completely_and_must_contain_its_marker() -> None:
    s = LoginScreen(flow(url_must_contain="/authorize"), 0.0)
    s.feed(b"docs: https://docs.test/help\r\nvisit https://auth.test/authorize?state=ab", 0.0)
    assert s.look(0.1, True).url_source is None and s.url is None  # the cursor is still on it: maybe cut off
    s.feed(b"cd", 0.2)
    found = s.look(0.2 + URL_QUIET, True)  # the CLI was quiet long enough
    assert found.url_source == "screen" and s.url == "https://auth.test/authorize?state=abcd"
    assert s.step() == "the credentials (sign-in not finished)"
    assert not s.offer("https://auth.test/authorize?other=1")  # the first one counts


def test_a_hyperlink_and_the_browser_hook_are_offered_before_the_screen() -> None:
    s = LoginScreen(flow(), 0.0)
    s.feed(b"\x1b]8;;https://auth.test/a?long=1\x1b\\Sign in\x1b]8;;\x1b\\\r\n", 0.0)
    assert s.look(0.0, True).url_source == "terminal hyperlink" and s.url == "https://auth.test/a?long=1"
    hook = LoginScreen(flow(), 0.0)
    assert not hook.offer("file:///etc/passwd") and not hook.offer("https://a.test/x y")
    assert hook.offer("https://a.test/x") and hook.url == "https://a.test/x"


def test_a_device_code_is_read_and_kept_out_of_reasons() -> None:
    s = LoginScreen(flow("device_code", code_pattern=r"code: (?P<code>[A-Z0-9]{4}-[A-Z0-9]{4})"), 0.0)
    assert s.step() == "the sign-in URL" and s.prompt() is None
    s.feed(b"Open https://auth.test/device\r\nand enter code: WXYZ-1234\r\n", 0.0)
    found = s.look(0.0, True)
    assert found.code_shown and found.url_source == "screen" and s.user_code == "WXYZ-1234"
    assert s.prompt() == {
        "flow": "device_code",
        "url": "https://auth.test/device",
        "user_code": "WXYZ-1234",
        "awaiting_code": False,
        "message": None,
    }
    assert "WXYZ-1234" not in s.tail()
    assert s.scrub("failed for wxyz-1234") == "failed for [code]"


def paste_screen() -> LoginScreen:
    s = LoginScreen(flow("paste_code", code_prompt=r"Paste code here"), 0.0)
    s.feed(b"visit: https://auth.test/authorize?s=1\r\nPaste code here > ", 0.0)
    s.look(URL_QUIET, True)
    return s


def test_a_pasted_code_is_taken_only_while_the_cli_waits_and_its_refusal_is_read() -> None:
    s = paste_screen()
    assert s.awaiting_code and s.step() == "the pasted code"
    assert s.take_code("wrong-code") and not s.awaiting_code and not s.take_code("again")
    s.feed(b"wrong-code\r\nInvalid code (invalid_grant)\r\nvisit: https://auth.test/authorize?s=2\r\n", 2.0)
    s.feed(b"Paste code here > ", 2.0)
    assert not s.look(2.0, True).refused  # not settled yet
    found = s.look(2.0 + CODE_RESULT_QUIET, True)
    assert found.refused and found.new_url and s.url == "https://auth.test/authorize?s=2"
    assert s.awaiting_code and s.message == "Invalid code (invalid_grant)"
    assert "wrong-code" in s.codes and "wrong-code" not in s.scrub("you typed wrong-code")


def test_a_cli_that_exited_after_a_refused_code_is_recognised() -> None:
    s = paste_screen()
    assert not s.refused_and_gone()  # no code was sent and no refusal kept
    s.take_code("bad-code")
    s.feed(b"bad-code\r\nCouldn't log in: That code wasn't accepted.\r\n", 1.0)
    assert not s.look(3.0, False).refused  # gone: not asking again
    assert s.refused_and_gone() and s.message == "Couldn't log in: That code wasn't accepted."
    again = LoginScreen(s.flow, 4.0, s.codes, s.message)  # the restarted CLI: a fresh screen, the same person
    assert again.message == s.message and again.codes is s.codes and again.url is None


def test_settling_and_the_last_lines() -> None:
    s = LoginScreen(flow(), 0.0)
    assert s.last_lines() == "no output"
    s.feed(b"one\r\ntwo\r\nthree   four\r\n", 1.0)
    assert s.settling(1.0) and not s.settling(1.0 + URL_QUIET + 0.2)
    assert s.last_lines(2) == "two | three four" and s.needs_look(50.0, -1) and not s.needs_look(50.0, s.screen.version)
