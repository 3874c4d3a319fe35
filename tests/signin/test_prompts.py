"""The signin_prompt push and pasted codes are checked before anything is kept or sent."""

from __future__ import annotations

import pytest

from hearth.signin.prompts import PromptError, parse_prompt
from hearth_agent.contract.signin import MAX_CODE, CodeRefused, check_code


def test_a_prompt_push_is_parsed_and_published_as_sent() -> None:
    p = parse_prompt(
        {"flow": "device_code", "url": "https://idp.example/device", "user_code": "ABCD-EFGH", "awaiting_code": False}
    )
    assert p.public() == {
        "flow": "device_code",
        "url": "https://idp.example/device",
        "user_code": "ABCD-EFGH",
        "awaiting_code": False,
        "message": None,
        "detail": None,  # a refused code: the CLI's own words (the controller fills it, hearth/signin/flow.py)
        "renewed": False,
    }
    again = parse_prompt(
        {"flow": "paste_code", "url": "http://x/a?b=c", "awaiting_code": True, "message": "Invalid code, try again"}
    )
    assert (again.awaiting_code, again.message, again.user_code) == (True, "Invalid code, try again", None)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"flow": "fax", "url": "https://a/"}, "flow must be one of"),
        ({"flow": "paste_code", "url": "javascript:alert(1)"}, "http(s) URL"),
        ({"flow": "paste_code", "url": "https://a/ b"}, "spaces or control"),
        ({"flow": "paste_code", "url": "https://a/", "awaiting_code": "yes"}, "true or false"),
        ({"flow": "paste_code", "url": "https://a/", "user_code": 5}, "user_code must be a string"),
    ],
)
def test_a_malformed_push_is_refused_naming_the_field(body: dict[str, object], names: str) -> None:
    with pytest.raises(PromptError, match=names.replace("(", r"\(").replace(")", r"\)")):
        parse_prompt(body)


def test_a_pasted_code_is_trimmed_of_spaces_only() -> None:
    assert check_code("  4/0AbCd-efGH_ij  ") == "4/0AbCd-efGH_ij"
    assert check_code("x" * MAX_CODE) == "x" * MAX_CODE


@pytest.mark.parametrize(
    ("code", "names"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc\r\nrm -rf ~", "control characters"),
        ("abc\n", "control characters"),
        ("a\x1b[2Jb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a\u0085b", "control characters"),
        ("x" * (MAX_CODE + 1), "longer than 512"),
        (None, "send"),
        (12345, "send"),
    ],
)
def test_bad_codes_are_refused_naming_the_fix(code: object, names: str) -> None:
    with pytest.raises(CodeRefused, match=names) as err:
        check_code(code)
    assert err.value.status == 400
