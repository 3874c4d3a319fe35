"""`hearth.prompts.intake.bound`: a sandbox's pushes, checked: unknown event types and repeated sequence numbers
dropped, the answer bounded with exactly one marker (the agent's own when it bounded first), strings bounded."""

from __future__ import annotations

from typing import Any

from hearth.prompts.intake import Live, bound
from hearth.store.models import PromptRow


def row() -> PromptRow:
    return PromptRow(id="p", user_id="u", last_seq=0, truncated=False)


def ev(seq: int, **kw: Any) -> dict[str, Any]:
    return {"seq": seq, **kw}


def test_repeats_and_foreign_events_are_dropped() -> None:
    r, live = row(), Live()
    got = bound(r, live, [ev(1, type="text", text="a"), ev(1, type="text", text="a"), ev(2, type="shell"), 3], 100)
    assert got == [{"type": "text", "seq": 1, "text": "a"}] and live.answer == "a"
    r.last_seq = 1  # as stored
    assert bound(r, live, [ev(1, type="text", text="a")], 100) == []  # a retried push
    got = bound(r, live, [ev(2, type="tool", name="x" * 999, input={"a": 1}, secret="s")], 100)
    assert got == [{"type": "tool", "seq": 2, "name": "x" * 400, "input": "{'a': 1}"}]  # own fields, bounded


def test_answer_bounded_with_one_marker() -> None:
    r, live = row(), Live()
    got = bound(r, live, [ev(i, type="text", text="0123456789") for i in range(1, 20)], 25)
    assert len(got) == 3 and got[-1]["truncated"] is True and "truncated" in got[-1]["text"]
    assert live.answer.startswith("0123456789" * 2 + "01234") and r.truncated
    assert bound(r, live, [ev(30, type="text", text="more")], 25) == []
    done = bound(r, live, [ev(31, type="done", text="the whole long answer")], 25)
    assert done[0]["text"] == live.answer  # the bounded text, not the CLI's unbounded final


def test_the_agents_marker_is_kept_once() -> None:
    r, live = row(), Live()
    marker = ev(2, type="text", text="[cut]", truncated=True)
    got = bound(r, live, [ev(1, type="text", text="abc"), marker, ev(3, type="text", text="x")], 3)
    assert [e["text"] for e in got] == ["abc", "[cut]"] and r.truncated
