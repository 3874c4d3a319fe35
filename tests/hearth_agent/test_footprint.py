"""What an agent does not import (each module an agent imports is memory in every sandbox, issue 25): argparse for
its two options, asyncio while the sandbox has no local egress proxy."""

from __future__ import annotations

import subprocess
import sys


def loaded(code: str, *modules: str) -> list[str]:
    """The `modules` in sys.modules after `code` runs in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().splitlines()[-1].split(",") if m] if out.strip() else []


def test_the_agent_parses_its_options_without_argparse() -> None:
    code = "from hearth_agent.__main__ import parse_args\nparse_args(['--config', 'x', '--notify-fd', '3'])"
    assert loaded(code, "argparse", "hearth_agent.__main__") == ["hearth_agent.__main__"]


def test_no_local_proxy_no_asyncio() -> None:
    code = "from hearth_agent.egress import Egress\ne = Egress({}, '/nonexistent')\ne.start()\ne.stop()\nprint(e.env())"
    assert loaded(code, "asyncio", "hearth_agent.egress") == ["hearth_agent.egress"]


def test_a_local_proxy_imports_it_when_it_is_configured() -> None:
    code = "from hearth_agent.egress import Egress\nEgress({'egress_proxy': {'allow': ['10.0.0.0/8']}}, '/x')"
    assert loaded(code, "hearth_agent.egressproxy") == ["hearth_agent.egressproxy"]


def test_the_api_server_does_without_http_server() -> None:
    assert loaded("import hearth_agent.server", "http.server", "html", "mimetypes") == []


def test_prompt_runs_are_imported_at_the_first_prompt() -> None:
    assert loaded("import hearth_agent.promptrun", "hearth_agent.promptproc") == []
    assert loaded("import hearth_agent.promptrun as p\np.Run", "hearth_agent.promptproc") == ["hearth_agent.promptproc"]
