"""A provider definition's `prompt` section — how to run its CLI non-interactively — and the one mapping engine that
turns the CLI's JSON lines into hearth's event schema. Stdlib only: the agent runs it in the CLI sandbox, and the
controller validates definitions with the same code (hearth/providers/model.py). docs/prompts.md is the reference.

    "prompt": {
      "command": ["codex", "exec"],                      argv start (never a shell)
      "resume": ["resume", "{conversation_id}"],         inserted right after `command` when continuing
      "args": ["--json", "{prompt}"],                    after the resume part; "{prompt}" only with input=argument
      "input": "stdin" | "argument",                     the prompt on stdin (closed after) or as ONE argv item
      "permissions": {"read_only": [...], "workspace_write": [...]},   appended after args
      "model": ["-m", "{model}"],                        appended when a model is asked for
      "env": {"NAME": "value"},
      "workspace": "workspace",                          the CLI's working directory, relative to HOME
      "needs_signin": ["regex", ...],                    the CLI's words for an unusable credential (expired/revoked)
      "events": [rule, ...]
    }

A rule: `{"when": {"type": "x", "a.b": "y"}, "each": "path"?, <outputs>}`. Every rule whose `when` matches a line
applies, in order. `when` values: a scalar (equal), a list (one of), "*" (present and not null). Paths are dotted
(`a.b.0.c`: list items by index); with `each` the rule applies to every item of that list and paths are relative to
the item (`^a.b` reads from the line's root). A path starting with `=` is a literal (`"=shell"`).
Outputs: `text` (a delta), `tool` {name, input, result} (each a path; summarised), `usage` (a path to an object, or
{key: path}), `error` (message), `done` (the final answer), `conversation` (the CLI's own session id), `model`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)

INPUTS = ("stdin", "argument")
LEVELS = ("read_only", "workspace_write")
KINDS = ("text", "tool", "usage", "error", "done", "conversation", "model")
SUMMARY = 200  # characters of a tool's input / result summary
_PATH = re.compile(r"^(\^)?[A-Za-z0-9_@$-]+(\.[A-Za-z0-9_@$-]+)*$")
_MISSING = object()


def _str_list(value: Any, what: str, *, empty: bool = True) -> list[str]:
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(a, str) and "\x00" not in a for a in value):
        raise ValueError(f"{what} must be a list of strings")
    if not empty and not value:
        raise ValueError(f"{what} must not be empty")
    return list(value)


def _path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not (value.startswith("=") or value == "$" or _PATH.match(value)):
        raise ValueError(f"{what} must be a dotted path (a.b.0.c), '$', or a literal '=value'")
    return value


@dataclass(frozen=True)
class Rule:
    when: dict[str, Any]
    each: str | None
    outputs: dict[str, Any]  # kind → path | {key: path}


@dataclass(frozen=True)
class PromptSpec:
    command: list[str]
    resume: list[str]
    args: list[str]
    input: str
    permissions: dict[str, list[str]]
    model: list[str]
    env: dict[str, str]
    workspace: str
    needs_signin: list[re.Pattern[str]]
    rules: list[Rule] = field(default_factory=list)

    def argv(self, prompt: str, permissions: str, model: str | None, conversation_id: str | None) -> list[str]:
        """The CLI's argv for one prompt (the prompt is in it only with input=argument, as exactly one item)."""
        if permissions not in self.permissions:
            raise ValueError(f"permissions must be one of {', '.join(LEVELS)}")
        if conversation_id is not None and not self.resume:
            raise ValueError("this CLI cannot continue a conversation (its definition has no resume)")
        out = list(self.command)
        if conversation_id is not None:
            out += [a.replace("{conversation_id}", conversation_id) for a in self.resume]
        placed = False
        for a in self.args:
            if a == "{prompt}" and self.input == "argument":
                out.append(prompt)
                placed = True
            else:
                out.append(a)
        out += self.permissions[permissions]
        if model:
            out += [a.replace("{model}", model) for a in self.model]
        if self.input == "argument" and not placed:
            out.append(prompt)
        return out


def parse_rule(d: Any, i: int) -> Rule:
    what = f"prompt.events[{i}]"
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object")
    unknown = sorted(set(d) - {"when", "each", *KINDS})
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; rules have when, each, {', '.join(KINDS)}")
    when = d.get("when") or {}
    if not isinstance(when, dict):
        raise ValueError(f"{what}.when must be an object of path → value")
    for k, v in when.items():
        _path(k, f"{what}.when key {k!r}")
        if isinstance(v, dict | float) or (isinstance(v, list) and not all(isinstance(x, str | int | bool) for x in v)):
            raise ValueError(f"{what}.when[{k!r}] must be a string, integer, boolean, a list of them, or '*'")
    each = None if d.get("each") is None else _path(d["each"], f"{what}.each")
    outputs: dict[str, Any] = {}
    for kind in KINDS:
        if kind not in d:
            continue
        v = d[kind]
        if kind == "tool":
            if not isinstance(v, dict) or "name" not in v or set(v) - {"name", "input", "result"}:
                raise ValueError(f"{what}.tool must be {{name, input?, result?}} (paths)")
            outputs[kind] = {k: _path(p, f"{what}.tool.{k}") for k, p in v.items()}
        elif kind == "usage" and isinstance(v, dict):
            outputs[kind] = {str(k): _path(p, f"{what}.usage.{k}") for k, p in v.items()}
        else:
            outputs[kind] = _path(v, f"{what}.{kind}")
    if not outputs:
        raise ValueError(f"{what} produces nothing: give at least one of {', '.join(KINDS)}")
    return Rule(dict(when), each, outputs)


def parse_prompt_section(d: Any) -> PromptSpec:
    if not isinstance(d, dict):
        raise ValueError("provider.prompt must be an object")
    known = {"command", "resume", "args", "input", "permissions", "model", "env", "workspace", "needs_signin", "events"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"provider.prompt has unknown keys {unknown}")
    command = _str_list(d.get("command"), "prompt.command", empty=False)
    if not all(command):
        raise ValueError("prompt.command items must not be empty")
    inp = d.get("input", "stdin")
    if inp not in INPUTS:
        raise ValueError(f"prompt.input must be one of {', '.join(INPUTS)}")
    args = _str_list(d.get("args"), "prompt.args")
    if "{prompt}" in args and (inp != "argument" or args.count("{prompt}") != 1):
        raise ValueError("prompt.args may hold '{prompt}' once, and only with input=argument")
    resume = _str_list(d.get("resume"), "prompt.resume")
    if resume and not any("{conversation_id}" in a for a in resume):
        raise ValueError("prompt.resume must contain {conversation_id}")
    model = _str_list(d.get("model"), "prompt.model")
    if model and not any("{model}" in a for a in model):
        raise ValueError("prompt.model must contain {model}")
    perms = d.get("permissions")
    if not isinstance(perms, dict) or set(perms) != set(LEVELS):
        raise ValueError(f"prompt.permissions must give the flags for exactly: {', '.join(LEVELS)}")
    permissions = {k: _str_list(perms[k], f"prompt.permissions.{k}") for k in LEVELS}
    env = d.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\x00" not in k + v for k, v in env.items()
    ):
        raise ValueError("prompt.env must be an object of string names to string values")
    workspace = d.get("workspace", "workspace")
    if not isinstance(workspace, str) or not workspace or workspace.startswith("/") or ".." in workspace.split("/"):
        raise ValueError("prompt.workspace must be a path relative to HOME without '..'")
    needs = []
    for p in _str_list(d.get("needs_signin"), "prompt.needs_signin"):
        try:
            needs.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"prompt.needs_signin {p!r} is not a valid regular expression: {exc}") from None
    raw_rules = d.get("events")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ValueError("prompt.events must be a non-empty list of rules")
    rules = [parse_rule(r, i) for i, r in enumerate(raw_rules)]
    return PromptSpec(command, resume, args, inp, permissions, model, dict(env), workspace, needs, rules)


# ---- the mapping engine -------------------------------------------------------------------------------------------


def lookup(obj: Any, path: str, root: Any = None) -> Any:
    """The value at a dotted path (`_MISSING` when absent); `=x` is the literal "x", `$` the object itself."""
    if path.startswith("="):
        return path[1:]
    if path.startswith("^"):
        obj, path = (obj if root is None else root), path[1:]
    if path == "$":
        return obj
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part, _MISSING)
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
        if cur is _MISSING:
            return _MISSING
    return cur


def _matches(obj: Any, when: dict[str, Any], root: Any) -> bool:
    for path, want in when.items():
        got = lookup(obj, path, root)
        if want == "*":
            if got is _MISSING or got is None:
                return False
        elif isinstance(want, list):
            if got is _MISSING or isinstance(got, dict | list) or got not in want:
                return False
        elif got is _MISSING or type(got) is not type(want) or got != want:
            return False
    return True


def summary(value: Any, limit: int = SUMMARY) -> str:
    """A short one-line text of any JSON value (a tool's input or result)."""
    if value is _MISSING or value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any) -> str | None:
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # e.g. a list of content blocks: their texts joined
        parts = [v if isinstance(v, str) else v.get("text") for v in value if isinstance(v, str | dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return json.dumps(value, ensure_ascii=False)


def _usage(spec: Any, item: Any, root: Any) -> dict[str, Any] | None:
    if isinstance(spec, dict):
        out = {k: v for k, p in spec.items() if (v := lookup(item, p, root)) is not _MISSING and v is not None}
    else:
        v = lookup(item, spec, root)
        out = dict(v) if isinstance(v, dict) else {}
    out = {k: v for k, v in out.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    return out or None


@dataclass
class Mapped:
    """What one line produced: hearth events in order, and what it said about the run."""

    events: list[dict[str, Any]] = field(default_factory=list)
    conversation: str | None = None
    model: str | None = None


def map_line(rules: list[Rule], line: Any) -> Mapped:
    """hearth events for one decoded JSON line: {"type": "text", "text"} | {"type": "tool", "name", "input",
    "result"} | {"type": "usage", "usage": {...}} | {"type": "error", "message"} | {"type": "done", "text"}."""
    out = Mapped()
    for rule in rules:
        items: list[Any] = [line]
        if rule.each is not None:
            seq = lookup(line, rule.each, line)
            items = seq if isinstance(seq, list) else []
        for item in items:
            if _matches(item, rule.when, line):
                _apply(rule, item, line, out)
    return out


def _apply(rule: Rule, item: Any, root: Any, out: Mapped) -> None:
    o = rule.outputs
    if "conversation" in o:
        v = lookup(item, o["conversation"], root)
        if isinstance(v, str | int) and not isinstance(v, bool) and str(v):
            out.conversation = str(v)[:200]
    if "model" in o:
        v = lookup(item, o["model"], root)
        if isinstance(v, str) and v:
            out.model = v[:200]
    if "text" in o:
        t = _text(lookup(item, o["text"], root))
        if t:
            out.events.append({"type": "text", "text": t})
    if "tool" in o:
        name = lookup(item, o["tool"]["name"], root)
        if name is not _MISSING and name is not None:
            ev = {"type": "tool", "name": summary(name, 80)}
            for k in ("input", "result"):
                if k in o["tool"]:
                    ev[k] = summary(lookup(item, o["tool"][k], root))
            out.events.append(ev)
    if "usage" in o:
        u = _usage(o["usage"], item, root)
        if u:
            out.events.append({"type": "usage", "usage": u})
    if "error" in o:
        m = _text(lookup(item, o["error"], root))
        if m:
            out.events.append({"type": "error", "message": m[:2000]})
    if "done" in o:
        t = _text(lookup(item, o["done"], root))
        out.events.append({"type": "done", "text": t or ""})
