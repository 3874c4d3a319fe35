"""The agent's two command-line options (hearth_agent/__main__.py parses them without argparse)."""

from __future__ import annotations

import pytest

from hearth_agent.__main__ import Args, parse_args


def test_the_options_in_both_spellings() -> None:
    assert parse_args(["--config", "/run/hearth/agent.json"]) == Args("/run/hearth/agent.json", None)
    assert parse_args(["--config=/dev/fd/3", "--notify-fd", "7"]) == Args("/dev/fd/3", 7)
    assert parse_args(["--notify-fd=9", "--config", "x"]) == Args("x", 9)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        ([], "--config is required"),
        (["--config"], "--config needs a value"),
        (["--config", "a", "--config", "b"], "unexpected argument '--config'"),
        (["--config", "a", "--verbose"], "unexpected argument '--verbose'"),
        (["--config", "a", "--notify-fd", "seven"], "--notify-fd must be an integer"),
    ],
)
def test_a_usage_error_exits_2_and_says_why(argv: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hearth_agent --config PATH")
    assert why in err
