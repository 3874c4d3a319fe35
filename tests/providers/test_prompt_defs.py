"""The real CLIs' `prompt` sections (hearth/providers/defs/{claude_code,codex,gemini_cli}.json) against the JSON lines
the pinned CLIs really printed (tests/providers/fixtures/prompts/<provider>_<case>.jsonl, captured by running each
CLI in a namespace against the model-API stand-in, hearth/standins/modelapi.py: `text` a plain answer, `refresh`
an expired token refreshed during the prompt, `revoked` a revoked account, `tool` a tool call then the answer).
Mapped with the one engine (hearth_agent/promptdef.py): text intact, tools named, usage, the conversation id, and a
revoked credential's words matched by the definition's `needs_signin`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hearth.providers.registry import load
from hearth.standins import modelapi
from hearth_agent.promptdef import PromptSpec, map_line, parse_prompt_section

FIXTURES = Path(__file__).parent / "fixtures" / "prompts"
PROVIDERS = load()
REAL = ("claude_code", "codex", "gemini_cli")


def spec(name: str) -> PromptSpec:
    section = PROVIDERS[name].prompt
    assert section is not None
    return parse_prompt_section(section.model_dump())


def mapped(name: str, case: str) -> tuple[list[dict[str, Any]], str | None, str | None]:
    s = spec(name)
    events: list[dict[str, Any]] = []
    conversation = model = None
    for line in (FIXTURES / f"{name}_{case}.jsonl").read_text().splitlines():
        m = map_line(s.rules, json.loads(line))
        events += m.events
        conversation = m.conversation or conversation
        model = m.model or model
    return events, conversation, model


def text(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "text")


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("case", ["text", "refresh"])
def test_an_answer_maps_to_its_text_intact_with_usage_and_the_conversation(name: str, case: str) -> None:
    events, conversation, _ = mapped(name, case)
    assert text(events) == modelapi.ANSWER
    assert not [e for e in events if e["type"] == "error"]
    usage = [e["usage"] for e in events if e["type"] == "usage"]
    assert usage and usage[-1]["output_tokens"] == 9  # what the stand-in reported
    assert conversation and len(conversation) >= 16  # the CLI's own session / thread id
    dones = [e for e in events if e["type"] == "done"]
    assert all(d["text"] == modelapi.ANSWER for d in dones)  # where the CLI says its final answer, it is the same


def test_claude_code_deltas_stream_in_pieces_and_name_the_model() -> None:
    events, _, model = mapped("claude_code", "text")
    pieces = [e["text"] for e in events if e["type"] == "text"]
    assert len(pieces) == 4  # the stand-in's four chunks, not one final message
    assert model and model.startswith("claude-")
    assert [e["type"] for e in events][-1] == "done"


@pytest.mark.parametrize("name", ["claude_code", "gemini_cli"])
def test_a_tool_call_is_named_with_its_input_and_result_before_the_answer(name: str) -> None:
    events, _, _ = mapped(name, "tool")
    tools = [e for e in events if e["type"] == "tool"]
    assert tools[0]["name"] in ("Read", "read_file")
    assert modelapi.TOOL_FILE in tools[0]["input"]
    assert tools[1]["name"] == "result"
    if name == "claude_code":  # Claude Code gives the file's content back; Gemini CLI's display output is empty
        assert "pelican" in tools[1]["result"]
    first_text = next(i for i, e in enumerate(events) if e["type"] == "text")
    assert events.index(tools[0]) < first_text
    assert text(events) == modelapi.ANSWER


@pytest.mark.parametrize("name", REAL)
def test_a_revoked_credential_is_an_error_the_definition_calls_needs_signin(name: str) -> None:
    events, _, _ = mapped(name, "revoked")
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert errors, events
    assert text(events) in ("", "Failed to authenticate: OAuth session expired and could not be refreshed")
    assert any(p.search(m) for p in spec(name).needs_signin for m in errors)
    # and an answer is never taken for a revoked credential
    for case in ("text", "refresh"):
        said = [e.get("text", "") + e.get("message", "") for e in mapped(name, case)[0]]
        assert not any(p.search(s) for p in spec(name).needs_signin for s in said)


@pytest.mark.parametrize("name", REAL)
def test_argv_per_permission_level_model_and_resume(name: str) -> None:
    s = spec(name)
    ro = s.argv("hello", "read_only", None, None)
    rw = s.argv("hello", "workspace_write", "m-1", "conv-1")
    assert "hello" not in ro and "hello" not in rw  # the prompt goes on stdin, never in argv
    assert s.input == "stdin"
    want_ro = {"claude_code": "plan", "codex": 'sandbox_mode="read-only"', "gemini_cli": "plan"}[name]
    want_rw = {"claude_code": "acceptEdits", "codex": 'sandbox_mode="workspace-write"', "gemini_cli": "auto_edit"}
    assert want_ro in ro and want_rw[name] in rw and want_ro not in rw
    assert "m-1" in rw and "conv-1" in rw and "conv-1" not in ro
    assert rw[0] == ro[0] == PROVIDERS[name].cli.bin  # type: ignore[union-attr]
