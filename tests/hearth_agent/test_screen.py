"""The rendered terminal screen (pyte) the agent reads like a person: cursor-addressed text, wrapped URLs."""

from __future__ import annotations

from hearth_agent.screen import Screen


def test_words_drawn_with_cursor_moves_read_as_words() -> None:
    s = Screen(40, 5)
    # Ink draws the gaps between words as absolute column moves (ESC[<n>G), and redraws the line in place
    s.feed(b"\x1b[1GPaste\x1b[7Gcode\x1b[12Ghere\x1b[17Gif\x1b[20Gprompted >")
    assert "Paste code here if prompted >" in s.visible()
    s.feed(b"\r\x1b[2KSigning in\xe2\x80\xa6")  # erased and rewritten: the old words are gone
    assert "Paste" not in s.visible() and "Signing in…" in s.visible()
    s.feed(b"\x1b[>4;2m\x1b[?2004hok")  # xterm modifyOtherKeys (private SGR) and bracketed paste: ignored
    assert "ok" in s.visible()


def test_a_url_wrapped_at_the_width_is_joined_and_the_cursor_marks_it_complete() -> None:
    s = Screen(20, 6)
    url = b"https://auth.test/authorize?state=" + b"x" * 30
    s.feed(b"visit:\r\n" + url)
    assert url.decode() in s.joined()
    assert s.cursor_offset() < s.joined().index(url.decode()) + len(url)  # the cursor is still on the URL's line
    s.feed(b"\r\nPaste code here")
    assert s.cursor_offset() > s.joined().index(url.decode())


def test_history_keeps_what_scrolled_off_and_the_tail_is_the_last_rows() -> None:
    s = Screen(30, 3)
    for i in range(8):
        s.feed(f"line {i}\r\n".encode())
    assert [f"line {i}" for i in range(8)] == [ln for ln in s.lines() if ln]
    assert s.tail(2) == ["line 6", "line 7"]
