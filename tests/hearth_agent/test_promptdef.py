"""The `prompt` section schema and the one mapping engine (stdlib, shared by agent and controller)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hearth.providers.registry import load
from hearth_agent.promptdef import lookup, map_line, parse_prompt_section, summary

BASE: dict[str, Any] = {
    "command": ["cli", "run"],
    "permissions": {"read_only": ["--plan"], "workspace_write": ["--edit"]},
    "events": [{"when": {"type": "delta"}, "text": "text"}],
}


def spec(**over: Any) -> Any:
    return parse_prompt_section({**BASE, **over})


def test_argv_places_resume_flags_model_and_one_argument_prompt() -> None:
    s = spec(
        resume=["resume", "{conversation_id}"],
        args=["--json", "-p", "{prompt}"],
        input="argument",
        model=["-m", "{model}"],
    )
    prompt = "-rf / ; $(echo no shell)\x01"
    argv = s.argv(prompt, "workspace_write", "m-2", "c1")
    assert argv == ["cli", "run", "resume", "c1", "--json", "-p", prompt, "--edit", "-m", "m-2"]
    assert s.argv(prompt, "read_only", None, None) == ["cli", "run", "--json", "-p", prompt, "--plan"]


def test_stdin_prompt_is_never_in_argv_and_argument_prompt_defaults_to_last() -> None:
    assert spec().argv("secret words", "read_only", None, None) == ["cli", "run", "--plan"]
    assert spec(input="argument").argv("q", "read_only", None, None)[-1] == "q"


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"permissions": {"read_only": []}}, "exactly"),
        ({"resume": ["--resume"]}, "conversation_id"),
        ({"model": ["-m"]}, "{model}"),
        ({"args": ["{prompt}"]}, "input=argument"),
        ({"input": "file"}, "stdin"),
        ({"events": []}, "non-empty"),
        ({"events": [{"when": {"type": "x"}}]}, "produces nothing"),
        ({"events": [{"when": {"type": "x"}, "txt": "a"}]}, "unknown keys"),
        ({"events": [{"text": "a..b"}]}, "dotted path"),
        ({"workspace": "../x"}, "relative"),
        ({"needs_signin": ["("]}, "regular expression"),
        ({"shell": True}, "unknown keys"),
    ],
)
def test_bad_sections_are_refused_naming_the_problem(over: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        spec(**over)
    assert words in str(info.value)


def test_no_resume_refuses_a_conversation() -> None:
    with pytest.raises(ValueError, match="cannot continue"):
        spec().argv("q", "read_only", None, "c1")
    with pytest.raises(ValueError, match="permissions"):
        spec().argv("q", "admin", None, None)


def test_lookup_paths_lists_literals_and_root() -> None:
    line = {"a": {"b": [{"c": 1}, {"c": 2}]}, "t": "x"}
    assert lookup(line, "a.b.1.c") == 2
    assert lookup(line, "a.b.-1.c") == 2
    assert lookup(line, "=shell") == "shell"
    assert lookup(line, "$") is line
    assert lookup(line, "a.b.5.c") is not None and lookup(line, "a.b.5.c") != 2  # missing, not an error
    assert lookup({"x": 1}, "^t", line) == "x"


CLAUDE_LIKE = [
    {"when": {"type": "system", "subtype": "init"}, "conversation": "session_id", "model": "model"},
    {"when": {"type": "stream_event", "event.delta.type": "text_delta"}, "text": "event.delta.text"},
    {
        "when": {"^type": "assistant", "type": "tool_use"},
        "each": "message.content",
        "tool": {"name": "name", "input": "input"},
    },
    {"when": {"type": "result", "is_error": False}, "done": "result", "usage": "usage"},
    {"when": {"type": "result", "is_error": True}, "error": "result"},
    {"when": {"type": ["error", "fatal"]}, "error": "message"},
    {"when": {"type": "item", "item.type": "*"}, "tool": {"name": "=shell", "result": "item.output"}},
]


def test_rules_map_lines_to_the_one_schema() -> None:
    rules = spec(events=CLAUDE_LIKE).rules
    m = map_line(rules, {"type": "system", "subtype": "init", "session_id": "s-1", "model": "big"})
    assert (m.conversation, m.model, m.events) == ("s-1", "big", [])
    m = map_line(rules, {"type": "stream_event", "event": {"delta": {"type": "text_delta", "text": "Hé\x00"}}})
    assert m.events == [{"type": "text", "text": "Hé\x00"}]
    assert map_line(rules, {"type": "stream_event", "event": {"delta": {"type": "input_json_delta"}}}).events == []
    content = [{"type": "text", "text": "x"}, {"type": "tool_use", "name": "Read", "input": {"path": "a" * 500}}]
    m = map_line(rules, {"type": "assistant", "message": {"content": content}})
    assert len(m.events) == 1 and m.events[0]["name"] == "Read"
    assert len(m.events[0]["input"]) == 200 and m.events[0]["input"].endswith("…")
    m = map_line(rules, {"type": "result", "is_error": False, "result": "ok", "usage": {"input_tokens": 3, "x": [1]}})
    assert m.events == [{"type": "usage", "usage": {"input_tokens": 3}}, {"type": "done", "text": "ok"}]  # done last
    assert map_line(rules, {"type": "result", "is_error": True, "result": "boom"}).events == [
        {"type": "error", "message": "boom"}
    ]
    assert map_line(rules, {"type": "fatal", "message": "m"}).events == [{"type": "error", "message": "m"}]
    m = map_line(rules, {"type": "item", "item": {"type": "cmd", "output": "ls\n"}})
    assert m.events == [{"type": "tool", "name": "shell", "result": "ls"}]
    assert map_line(rules, {"type": "item", "item": {"type": None}}).events == []


def test_type_strict_equality_and_odd_lines() -> None:
    rules = spec(events=[{"when": {"n": 1}, "text": "t"}]).rules
    assert map_line(rules, {"n": True, "t": "x"}).events == []  # True is not 1
    assert map_line(rules, {"n": 1, "t": "x"}).events == [{"type": "text", "text": "x"}]
    for odd in ([1, 2], "text", None, 3, {"n": 1, "t": {"deep": "obj"}}):
        assert isinstance(map_line(rules, odd).events, list)


def test_summary_is_one_short_line() -> None:
    assert summary({"cmd": "a b"}) == '{"cmd":"a b"}'
    assert summary("a\n\n  b") == "a b"
    assert summary("x" * 1000, 10) == "x" * 9 + "…"


def test_every_shipped_prompt_section_is_valid_on_both_sides() -> None:
    from hearth_agent.providerdef import parse_provider

    providers = load()
    assert providers["example"].prompt is not None
    for p in providers.values():
        if p.prompt is not None:
            parsed = parse_provider(json.loads(json.dumps(p.agent_document())))
            assert parsed.prompt is not None and parsed.prompt.rules
