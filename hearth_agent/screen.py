"""The CLI's terminal as a person sees it: PTY bytes fed into a VT emulator (pyte), read back as rendered text.

Cursor-addressed TUIs (Ink, ratatui) draw the gaps between words as cursor moves and redraw in place, so the raw
byte stream does not contain the words on the screen; the rendered screen does. Prompts, code prompts and device
codes are matched against `visible()`; URLs against `joined()` (lines that fill the full width are joined with the
next: a long URL wraps across rows); failure reasons carry `tail()`. `feed` returns the answers to the terminal
queries a CLI may block on (cursor position `ESC[6n`, device attributes `ESC[c`: Codex asks before drawing).
"""

from __future__ import annotations

import logging
from typing import Any

import pyte

log = logging.getLogger("hearth_agent")
COLS, ROWS, HISTORY = 120, 40, 400


class _Screen(pyte.HistoryScreen):
    replies: list[str]

    def write_process_input(self, data: str) -> None:
        self.replies.append(data)

    def report_device_status(self, mode: int = 0, private: bool = False, **_kw: Any) -> None:
        if mode == 6:  # cursor position (the answer the agent always gave: the CLI draws from where it is)
            self.write_process_input("\x1b[?1;1R" if private else "\x1b[1;1R")

    def report_device_attributes(self, mode: int = 0, private: bool = False, **_kw: Any) -> None:
        if mode == 0 and not private:
            self.write_process_input("\x1b[?1;2c")  # a VT100 with advanced video

    def select_graphic_rendition(self, *attrs: int, private: bool = False, **_kw: Any) -> None:
        if not private:  # CSI > … m (xterm modifyOtherKeys, sent by Ink) is not a colour change
            super().select_graphic_rendition(*attrs)


class Screen:
    """Not thread-safe: the caller holds its own lock."""

    def __init__(self, cols: int = COLS, rows: int = ROWS, history: int = HISTORY) -> None:
        self.cols, self.rows = cols, rows
        self._screen = _Screen(cols, rows, history=history, ratio=0.5)
        self._screen.replies = []
        self._stream = pyte.ByteStream(self._screen)
        self.version = 0  # bumps on every feed: "the screen changed"
        self._joined: tuple[int, str, int] = (-1, "", 0)

    def feed(self, raw: bytes) -> list[str]:
        """The CLI's output (split anywhere); returns the answers to the queries in it, to be written back."""
        self.version += 1
        try:
            self._stream.feed(raw)
        except Exception as exc:  # a sequence pyte cannot parse must not stop the sign-in: resume with a new parser
            log.warning("terminal sequence not understood", extra={"error": type(exc).__name__})
            self._stream = pyte.ByteStream(self._screen)
        replies, self._screen.replies = self._screen.replies, []
        return replies

    def _render(self, line: Any) -> str:
        return "".join(line[x].data for x in range(self.cols)).rstrip()

    def visible(self) -> str:
        """The rows on the screen now."""
        return "\n".join(line.rstrip() for line in self._screen.display)

    def lines(self) -> list[str]:
        """Every row still known: scrolled-off history, then the screen."""
        top = [self._render(line) for line in self._screen.history.top]
        return top + [line.rstrip() for line in self._screen.display]

    def joined(self) -> str:
        """`lines()` with rows that fill the whole width joined to the next (soft-wrapped text is one line again)."""
        return self._join()[0]

    def cursor_offset(self) -> int:
        """Where the line holding the cursor starts in `joined()`: text before it is complete (the CLI moved on)."""
        return self._join()[1]

    def _join(self) -> tuple[str, int]:
        if self._joined[0] == self.version:
            return self._joined[1], self._joined[2]
        history = [self._render(line) for line in self._screen.history.top]
        cursor_row = len(history) + self._screen.cursor.y
        out: list[str] = []
        carry, cursor_line = "", -1
        for row, line in enumerate(history + [line.rstrip() for line in self._screen.display]):
            if row == cursor_row:
                cursor_line = len(out)
            if len(line) >= self.cols:
                carry += line
                continue
            out.append(carry + line)
            carry = ""
        if carry:
            out.append(carry)
        offset = sum(len(line) + 1 for line in out[:cursor_line]) if cursor_line >= 0 else 0
        self._joined = (self.version, "\n".join(out), offset)
        return self._joined[1], offset

    def tail(self, n: int = 12) -> list[str]:
        """The last `n` non-blank rows, spaces collapsed (box-drawing borders kept)."""
        rows = [" ".join(line.split()) for line in self.lines()]
        return [r for r in rows if r][-n:]
