"""The model-API stand-in (hearth/standins/modelapi.py): streamed answers in each API's wire format, refresh with a
rotated refresh token (the old one refused afterwards), a revoked account answered 401 / invalid_grant. Pure
function calls here; the real CLIs against it: tests/standins/test_prompt_conformance.py."""

from __future__ import annotations

import json
from typing import Any

from hearth.standins import modelapi
from hearth.standins.modelapi import ModelAPI, model_route


def events(out: Any) -> list[dict[str, Any]]:
    raw = b"".join(out)
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def route(api: ModelAPI, host: str, path: str, body: Any, auth: str | None = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = model_route(api, "POST", host, path, raw, auth)
    assert out is not None
    return out


def test_claude_answer_streams_as_messages_api_events_and_the_text_is_whole() -> None:
    api = ModelAPI(chunks=5)
    code, out = route(api, "api.anthropic.com", "/v1/messages?beta=true", {"model": "m"}, "Bearer sk-ant-oat01-test")
    assert code == 200
    evs = events(out)
    assert [e["type"] for e in evs][:2] == ["message_start", "content_block_start"]
    assert evs[-1]["type"] == "message_stop"
    deltas = [e["delta"]["text"] for e in evs if e["type"] == "content_block_delta"]
    assert len(deltas) == 5 and "".join(deltas) == modelapi.ANSWER
    assert api.prompts == ["claude_code"]


def test_a_tool_marker_gets_a_tool_call_first_then_text_after_its_result() -> None:
    api = ModelAPI()
    body: dict[str, list[dict[str, Any]]] = {"messages": [{"role": "user", "content": f"read {modelapi.TOOL_MARKER}"}]}
    evs = events(route(api, "api.anthropic.com", "/v1/messages", body)[1])
    assert evs[1]["content_block"]["name"] == "Read"
    body["messages"].append({"role": "user", "content": [{"type": "tool_result", "content": "x"}]})
    evs = events(route(api, "api.anthropic.com", "/v1/messages", body)[1])
    assert evs[1]["content_block"]["type"] == "text"


def test_refresh_rotates_and_the_old_refresh_token_and_access_token_are_refused() -> None:
    api = ModelAPI()
    old_access, old_refresh = api.tokens("claude_code")
    body = {"grant_type": "refresh_token", "refresh_token": old_refresh}
    code, out = route(api, "platform.claude.com", "/v1/oauth/token", body)
    assert code == 200 and out["refresh_token"] != old_refresh and out["access_token"] != old_access
    assert api.refreshes == ["claude_code"]
    assert route(api, "platform.claude.com", "/v1/oauth/token", body)[1]["error"] == "invalid_grant"  # rotated
    assert route(api, "api.anthropic.com", "/v1/messages", {}, f"Bearer {old_access}")[0] == 401
    assert route(api, "api.anthropic.com", "/v1/messages", {}, f"Bearer {out['access_token']}")[0] == 200
    path = "/v1internal:streamGenerateContent"  # another provider's tokens are not rotated by this one's refresh
    assert route(api, "cloudcode-pa.googleapis.com", path, {}, "Bearer ya29.test")[0] == 200


def test_codex_refresh_rotates_and_its_jwt_names_the_generation() -> None:
    api = ModelAPI()
    form = {"grant_type": "refresh_token", "refresh_token": "rt-test"}
    code, out = route(api, "auth.openai.com", "/oauth/token", form)
    assert code == 200 and out["refresh_token"] == "rt-test-1"
    url = ("chatgpt.com", "/backend-api/codex/responses")
    assert route(api, *url, {}, f"Bearer {out['access_token']}")[0] == 200
    stale = modelapi.fake_jwt({"email": "t@example.test"})  # sign-in's token: generation 0
    assert route(api, *url, {}, f"Bearer {stale}")[0] == 401
    evs = events(route(api, *url, {"model": "m"}, f"Bearer {out['access_token']}")[1])
    text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
    assert text == modelapi.ANSWER and evs[-1]["response"]["usage"]["total_tokens"] == 21


def test_gemini_keeps_its_refresh_token_as_google_does_and_streams_code_assist_chunks() -> None:
    api = ModelAPI(chunks=3)
    body = b"grant_type=refresh_token&refresh_token=1%2F%2Ftest&client_id=x"
    code, out = route(api, "oauth2.googleapis.com", "/token", body)
    assert code == 200 and out["access_token"] == "ya29.test1" and out["refresh_token"] == "1//test"
    path = "/v1internal:streamGenerateContent?alt=sse"
    evs = events(route(api, "cloudcode-pa.googleapis.com", path, {}, "Bearer ya29.test1")[1])
    texts = [e["response"]["candidates"][0]["content"]["parts"][0]["text"] for e in evs]
    assert len(texts) == 3 and "".join(texts) == modelapi.ANSWER
    assert evs[-1]["response"]["usageMetadata"]["totalTokenCount"] == 21


def test_a_revoked_account_gets_401_and_invalid_grant_everywhere() -> None:
    api = ModelAPI(revoked=True)
    assert route(api, "api.anthropic.com", "/v1/messages", {}, "Bearer sk-ant-oat01-test")[0] == 401
    assert route(api, "cloudcode-pa.googleapis.com", "/v1internal:streamGenerateContent", {})[0] == 401
    assert route(api, "chatgpt.com", "/backend-api/codex/responses", {})[0] == 401
    for host, path, provider in (
        ("platform.claude.com", "/v1/oauth/token", "claude_code"),
        ("auth.openai.com", "/oauth/token", "codex"),
        ("oauth2.googleapis.com", "/token", "gemini_cli"),
    ):
        body = {"grant_type": "refresh_token", "refresh_token": api.tokens(provider)[1]}
        code, out = route(api, host, path, body)
        assert (code, out["error"]) == (400, "invalid_grant")
    assert api.refreshes == [] and api.generations == {}


def test_other_requests_are_not_the_model_apis() -> None:
    api = ModelAPI()
    assert model_route(api, "GET", "api.anthropic.com", "/api/oauth/profile", b"", None) is None
    assert model_route(api, "POST", "platform.claude.com", "/v1/oauth/token", b'{"grant_type":"code"}', None) is None


def test_codex_warm_up_gets_no_answer() -> None:
    api = ModelAPI()
    evs = events(route(api, "chatgpt.com", "/backend-api/codex/responses", {"model": "m", "generate": False})[1])
    assert [e["type"] for e in evs] == ["response.created", "response.completed"]
    assert not api.streaming.is_set() and api.pieces_out == 0
