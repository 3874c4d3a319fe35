"""`hearth.api.jsonguard`: what strict JSON refuses, and that it refuses it without parsing what is too deep."""

from __future__ import annotations

import json
import sys

import pytest

from hearth.api import jsonguard


def kind(body: bytes) -> str | None:
    refusal = jsonguard.check(body)
    return refusal.kind if refusal is not None else None


def test_plain_bodies_pass() -> None:
    for body in (b"", b"  ", b"{}", b'{"user_id": "a", "mode": null}', b'{"scope": "view"}', b"[1, 2.5, -3e2]"):
        assert jsonguard.check(body) is None, body
    nested = b'{"a": ' * jsonguard.MAX_DEPTH + b"1" + b"}" * jsonguard.MAX_DEPTH
    assert jsonguard.check(nested) is None  # exactly the limit
    assert json.loads('"\\ud83d\\ude00"') == "\U0001f600"
    assert jsonguard.check(b'{"text": "\\ud83d\\ude00 \xc3\xa9"}') is None  # a surrogate *pair* is one character


def test_deep_nesting_is_refused_before_parsing() -> None:
    """`[` × 2000 was a RecursionError; far deeper than the interpreter's recursion limit is refused just the same."""
    for n in (jsonguard.MAX_DEPTH + 1, 2000, sys.getrecursionlimit() * 20):
        assert kind(b"[" * n + b"]" * n) == "json_depth", n
        assert kind(b'{"a":' * n + b"1" + b"}" * n) == "json_depth", n
    assert kind(b"[" * 5000) == "json_depth"  # unbalanced: refused all the same


def test_brackets_inside_strings_do_not_count() -> None:
    text = b'{"user_id": "' + b"[{" * 3000 + b'"}'
    assert jsonguard.check(text) is None
    escaped = b'{"a": "\\"' + b"[" * 3000 + b'", "b": "\\\\"}'  # an escaped quote and an escaped backslash
    assert jsonguard.check(escaped) is None
    assert not jsonguard.too_deep(escaped)
    assert jsonguard.too_deep(b'["\\\\"' + b", [" * 40 + b"]" * 40 + b"]")  # the string ends after \\


@pytest.mark.parametrize(
    ("body", "expected", "field"),
    [
        (b'{"user_id": "\\ud800"}', "string_unicode", ("user_id",)),
        (b'{"a": [1, {"b": "x\\udfff"}]}', "string_unicode", ("a", 1, "b")),
        (b'{"\\udc00": 1}', "string_unicode", ("\udc00",)),
        (b'{"user_id": NaN}', "json_number", ()),
        (b'{"x": -Infinity}', "json_number", ()),
        (b'{"x": 1e999}', "number", ()),
        (b'{"x": -1e400}', "number", ()),
        (b'{"x": 1' + b"0" * 5000 + b"}", "number", ()),
        (b'{"x": 123456789012345678901}', "number", ()),
        (b'{"user_id": "a", "user_id": "b"}', "duplicate_key", ("user_id",)),
        (b'{"a": {"k": 1, "k": 1}}', "duplicate_key", ("k",)),
        (b'{"user_id": "\xff"}', "json_encoding", ()),
        (b"\xff\xfe{\x00}\x00", "json_encoding", ()),
        (b"{'user_id': 'a'}", "json_invalid", ()),
        (b'{"a": 1,}', "json_invalid", ()),
        (b'{"a": "line\nbreak"}', "json_invalid", ()),
    ],
)
def test_hostile_bodies_are_refused_naming_what(body: bytes, expected: str, field: tuple[object, ...]) -> None:
    refusal = jsonguard.check(body)
    assert refusal is not None and refusal.kind == expected, (body[:40], refusal)
    assert refusal.loc == field
    json.dumps(refusal.reason).encode("ascii")  # the reason itself always renders
    print(f"\n{body[:40]!r} → {refusal.reason}")


def test_the_reason_names_the_field() -> None:
    refusal = jsonguard.check(b'{"user_id": "ok", "items": [{"name": "\\ud800"}]}')
    assert refusal is not None
    assert refusal.reason.startswith("items[0].name: ") and "U+D800" in refusal.reason
    long = jsonguard.field_name(("k" * 500,))
    assert len(long) == jsonguard.NAME_CHARS + 1 and long.endswith("…")
    assert jsonguard.field_name(()) == "the body"
    assert jsonguard.field_name(("\ud800",)) == "\\ud800"  # a name that is not text is shown escaped
