"""Strict JSON for API request bodies: what the app's parser would choke on, or take wrongly, is found before the
app sees the body, with a reason that names the field and the fix (the limits middleware answers it with 422).

- Nesting: counted by a scan of the raw bytes before anything is parsed (Python's parser recurses: `[` × 2000 was
  a RecursionError, a 500 with a traceback). At most `MAX_DEPTH` levels; API bodies are flat objects.
- Encoding: UTF-8 only (RFC 8259).
- Numbers: NaN, Infinity and -Infinity are not JSON; integers of more than `MAX_DIGITS` digits and floats beyond the
  double range (`1e999`, which Python reads as infinity) are refused.
- Duplicate keys: which one wins depends on the parser; refused.
- Strings (keys and values) that are not Unicode text — a lone surrogate such as `"\\ud800"`, which no encoder can
  write back out — are refused, naming the field (rendering the validation error about them was a 500).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_DEPTH = 32  # arrays/objects inside each other
MAX_DIGITS = 20  # an integer's digits (a 64-bit integer has at most 20)
NAME_CHARS = 64  # a field name in a reason is cut to this many characters

_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)  # an escape (one unit), a quote, a bracket
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Refusal:
    """Why a body is refused: `reason` for people, `kind` for programs, `loc` the field (() for the whole body)."""

    reason: str
    kind: str
    loc: Loc = ()


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays/objects nest deeper than `limit` outside strings (linear, nothing is parsed)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string = 0, False
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def field_name(loc: Loc) -> str:
    """`a.b[2]` for ("a", "b", 2); "the body" for ()."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:NAME_CHARS] + ("…" if len(text) > NAME_CHARS else "") if text else "the body"


def _refuse_constant(name: str) -> object:
    raise _Refused(Refusal(f"request body is not JSON: {name} is not a JSON number", "json_number"))


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Refused(
            Refusal(f"request body holds a number of {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})", "number")
        )
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text[:24] + ("…" if len(text) > 24 else "")
        raise _Refused(Refusal(f"request body holds a number out of range: {shown}", "number"))
    return value


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(Refusal(f"request body has the key {field_name((key,))!r} twice", "duplicate_key", (key,)))
        out[key] = value
    return out


def _strings(value: object, loc: Loc, depth: int = 0) -> Iterator[tuple[Loc, str]]:
    """Every string in a parsed body with where it is (keys at their own field). Bounded: the depth was checked."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict) and depth <= MAX_DEPTH:
        for key, item in value.items():
            yield (*loc, key), key
            yield from _strings(item, (*loc, key), depth + 1)
    elif isinstance(value, list) and depth <= MAX_DEPTH:
        for i, item in enumerate(value):
            yield from _strings(item, (*loc, i), depth + 1)


def _not_text(value: object) -> Refusal | None:
    for loc, text in _strings(value, ()):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = f"U+{ord(text[exc.start]):04X}"
            return Refusal(
                f"{field_name(loc)}: the string is not Unicode text (a lone surrogate, {char}); send UTF-8 text",
                "string_unicode",
                loc,
            )
    return None


def check(body: bytes) -> Refusal | None:
    """None when `body` is empty or strict JSON the app can parse and render; else why not."""
    if not body.strip():
        return None  # no body: the app says what is missing
    if too_deep(body):
        return Refusal(f"request body nests arrays/objects deeper than {MAX_DEPTH} levels", "json_depth")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Refusal(f"request body is not UTF-8 (byte {exc.start} is {body[exc.start]:#04x})", "json_encoding")
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_int=_int, parse_float=_float, object_pairs_hook=_object
        )
    except _Refused as exc:
        return exc.refusal
    except json.JSONDecodeError as exc:
        return Refusal(f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "json_invalid")
    except (ValueError, RecursionError):
        return Refusal("request body is not JSON", "json_invalid")
    return _not_text(value)
