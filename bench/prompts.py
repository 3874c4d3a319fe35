"""Prompts with a real, pinned CLI (default Claude Code) against the model-API stand-in (hearth/standins/modelapi.py),
offline, in a network namespace of its own (`hearth-b<hex>`):

1. prompt → first `text` and → `done`: the CLI run directly on the host (argv from its definition, stdout read and
   mapped here) against the same stand-in, versus the same CLI through the CLI sandbox agent's prompt runner
   (hearth_agent/promptrun.py: argv, line mapping, batching, HTTP pushes to a callback receiver on loopback — what a
   running CLI sandbox adds on its side); the ratio, and the goal for a running sandbox (≤ 1.1× + 50 ms);
2. 20 concurrent prompts: 20 runners (20 homes, one per user; here in this one process, where a real sandbox has
   an agent process of its own) at once, against 20 direct runs at once, in both orders;
3. memory of a CLI sandbox of a real local controller (netns driver, its own fabric): idle and running (RSS and PSS
   of the processes in its namespace), then stopped (no process; its home on disk).

Prompt → done for a *stopped* CLI sandbox, for *none* (a fresh one boots) and for *pooled* (none yet, one taken from
the warm pool, HEARTH_POOL_SIZE=cli:1, with the user's home moved in: hearth/clisandbox/homes.py) go through the
controller's prompt API (hearth/prompts/, issue 23 items 1 and 4). One controller runs the pool for the whole
run; the *none* case is measured with the pool set aside, and no refill boots while anything is measured.

    sudo .venv/bin/python -m bench.prompts -n 5 [--cli codex] [--concurrent 20] [--no-memory]

Removes everything it creates (namespaces, homes, the controller's data directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.guest import clis
from hearth.providers.model import Provider
from hearth.providers.registry import load
from hearth.standins import modelapi, promptcheck
from hearth.standins.conformance import cli_version, offline_netns
from hearth.standins.standin import Net, provider_net, wrap
from hearth_agent import promptrun
from hearth_agent.promptdef import PromptSpec, map_line, parse_prompt_section
from hearth_agent.promptrun import Prompts

PROMPT = "Say the stand-in's sentence."
TIMEOUT = 180.0
MARKS: dict[str, dict[str, float]] = {}  # prompt id → when the runner read its first text line / saw the CLI exit


def instrument() -> None:
    """Mark, inside the agent's runner, when it read the CLI's first text line and when the CLI had exited: the
    agent's own share of the latency (→ the receiver) is then measured apart from the CLI's, which varies by
    seconds on a loaded host."""
    read_line, finish = promptrun.Run._line, promptrun.Run._finish

    def _line(self: promptrun.Run, line: bytes) -> None:
        read_line(self, line)
        if self.text_bytes and "text" not in MARKS.setdefault(self.id, {}):
            MARKS[self.id]["text"] = time.monotonic()

    def _finish(self: promptrun.Run) -> None:
        MARKS.setdefault(self.id, {})["exit"] = time.monotonic()
        finish(self)

    promptrun.Run._line = _line  # type: ignore[method-assign]
    promptrun.Run._finish = _finish  # type: ignore[method-assign]


@dataclass(frozen=True)
class Timing:
    first_text: float
    done: float
    own_text: float = 0.0  # through the agent: its first text line read → at the receiver
    own_done: float = 0.0  # through the agent: the CLI exited → the final batch at the receiver


def new_home(provider: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix="hearth-bench-prompt-"))
    os.chmod(home, 0o700)
    for rel, data in promptcheck.signed_in_files(provider).items():
        p = home / rel
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        p.write_bytes(data)
        p.chmod(0o600)
    (home / "workspace").mkdir(mode=0o700)
    return home


def definition(provider: Provider, ns: str, net: Net) -> dict[str, Any]:
    doc = provider.agent_document()
    doc["prompt"]["command"] = [
        "nsenter",
        f"--net=/run/netns/{ns}",
        "--",
        *wrap(doc["prompt"]["command"], net.hosts_file),
    ]
    doc["prompt"]["env"] = {**doc["prompt"].get("env", {}), **net.env}
    return doc


def direct(provider: Provider, doc: dict[str, Any], home: Path, bin_dir: Path) -> Timing:
    """The CLI on the host: the definition's argv and env, the prompt on stdin; the first stdout line that maps to
    `text` and the exit timed here."""
    spec = parse_prompt_section(doc["prompt"])
    env = Prompts({}, str(home)).env(spec)  # the environment the agent gives the CLI: the comparison is fair
    return run_argv(spec.argv(PROMPT, "read_only", None, None), env, home / spec.workspace, spec)


def run_argv(argv: list[str], env: dict[str, str], cwd: Path, spec: PromptSpec) -> Timing:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,  # as the agent starts it (Popen flags alike: only the agent's work differs)
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    proc.stdin.write(PROMPT.encode())
    proc.stdin.close()
    first: float | None = None
    text = ""
    for line in proc.stdout:
        try:
            events = map_line(spec.rules, json.loads(line)).events
        except ValueError:
            continue
        for ev in events:
            if ev["type"] == "text":
                first = first if first is not None else time.monotonic() - t0
                text += ev["text"]
    proc.wait(TIMEOUT)
    done = time.monotonic() - t0
    if proc.returncode != 0 or text != modelapi.ANSWER or first is None:
        raise SystemExit(f"direct {argv[-1]}: exit {proc.returncode}, text {text!r}")
    return Timing(first, done)


def through_agent(prompts: Prompts, rx: promptcheck.Receiver, doc: dict[str, Any]) -> Timing:
    pid = secrets.token_hex(6)
    t0 = time.monotonic()
    code, out = prompts.start({"id": pid, "provider": doc, "prompt": PROMPT, "timeout": TIMEOUT})
    if code != 202:
        raise SystemExit(f"agent: HTTP {code}: {out}")
    final = rx.final(pid, TIMEOUT + 30)
    done = time.monotonic() - t0
    text = "".join(e["text"] for e in rx.events(pid) if e["type"] == "text")
    if final is None or final["final"]["status"] != "completed" or text != modelapi.ANSWER:
        raise SystemExit(f"agent: {final and final['final']}, text {text!r}")
    arrived = time.monotonic()
    marks = MARKS.pop(pid, {})
    own_text = rx.first_text[pid] - marks.get("text", rx.first_text[pid])
    return Timing(rx.first_text[pid] - t0, done, own_text, arrived - marks.get("exit", arrived))


def med(ts: list[Timing], key: Callable[[Timing], float]) -> float:
    return statistics.median(key(t) for t in ts)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def latency(provider: Provider, n: int, concurrent: int, bin_dir: Path) -> None:
    homes: list[Path] = []
    try:
        with (
            offline_netns("hearth-b") as ns,
            provider_net(ns, modelapi.responder(modelapi.ModelAPI())) as net,
            promptcheck.receiver() as rx,
        ):
            os.environ["HEARTH_CLIS_BIN"] = str(bin_dir)
            doc = definition(provider, ns, net)
            homes = [new_home(provider.name) for _ in range(max(2, concurrent))]
            secret = promptcheck.SECRET
            runners = [
                Prompts({"callback": rx.url, "session_id": f"bench-{i}", "secret": secret}, str(h))
                for i, h in enumerate(homes)
            ]
            direct(provider, doc, homes[0], bin_dir)  # warm the page cache for both paths
            through_agent(runners[1], rx, doc)
            d_runs: list[Timing] = []
            a_runs: list[Timing] = []
            for i in range(n):  # interleaved, each first in turn, so both see the same load
                if i % 2:
                    a_runs.append(through_agent(runners[1], rx, doc))
                d_runs.append(direct(provider, doc, homes[0], bin_dir))
                if not i % 2:
                    a_runs.append(through_agent(runners[1], rx, doc))
                print(
                    f"run {i + 1}: direct first text {d_runs[-1].first_text:6.3f}s done {d_runs[-1].done:6.3f}s | "
                    f"agent first text {a_runs[-1].first_text:6.3f}s done {a_runs[-1].done:6.3f}s"
                )
            for label, key in (("first text", lambda t: t.first_text), ("done", lambda t: t.done)):
                d, a = med(d_runs, key), med(a_runs, key)
                goal = "meets" if a <= 1.1 * d + 0.05 else "misses"
                print(
                    f"median prompt → {label}: direct {d:.3f}s, through the agent {a:.3f}s: ratio {a / d:.2f}, "
                    f"+{(a - d) * 1000:.0f} ms ({goal} ≤ 1.1× + 50 ms)"
                )
            own_t = statistics.median(t.own_text for t in a_runs) * 1000
            own_d = statistics.median(t.own_done for t in a_runs) * 1000
            print(
                f"the agent's own share (median): first text line read → at the receiver {own_t:.1f} ms; "
                f"the CLI exited → final batch at the receiver {own_d:.1f} ms"
            )
            concurrency(provider, doc, homes[:concurrent], runners[:concurrent], rx, bin_dir)
            for r in runners:
                r.shutdown()
    finally:
        for h in homes:
            shutil.rmtree(h, ignore_errors=True)


def concurrency(
    provider: Provider,
    doc: dict[str, Any],
    homes: list[Path],
    runners: list[Prompts],
    rx: promptcheck.Receiver,
    bin_dir: Path,
) -> None:
    k = len(runners)
    for label in ("direct", "agent", "agent", "direct"):  # both orders: the host's load drifts (2 shared cores)
        out: list[Timing | None] = [None] * k
        errors: list[str] = []

        def one(i: int, label: str = label, out: list[Timing | None] = out, errors: list[str] = errors) -> None:
            try:
                out[i] = (
                    direct(provider, doc, homes[i], bin_dir)
                    if label == "direct"
                    else through_agent(runners[i], rx, doc)
                )
            except BaseException as exc:  # reported below
                errors.append(f"{type(exc).__name__}: {exc}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        ok = [t for t in out if t is not None]
        if errors:
            print(f"{k} concurrent {label}: {len(errors)} failed: {errors[0]}")
        if ok:
            firsts = [t.first_text for t in ok]
            dones = [t.done for t in ok]
            print(
                f"{k} concurrent {label:6s}: all done in {wall:6.2f}s; first text median {statistics.median(firsts):.2f}s"
                f" p95 {p95(firsts):.2f}s; done median {statistics.median(dones):.2f}s p95 {p95(dones):.2f}s"
            )


def netns_memory(netns: str) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, process count) of the processes in `netns`."""
    from hearth.sandbox.netns import pids_in_netns

    rss = pss = 0
    pids = pids_in_netns(netns)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue  # exited meanwhile
    return rss / 1024, pss / 1024, len(pids)


async def memory(provider: Provider) -> None:
    """A real CLI sandbox (netns driver) of a local controller: its processes' memory idle, then stopped."""
    from hearth.serving.local import local_controller, scratch_settings
    from hearth.store.models import CliSandboxRow
    from hearth.vault.store import CredentialFile

    files = [
        CredentialFile(rel, 0o600, data)
        for rel, data in promptcheck.signed_in_files(provider.name).items()
        if rel in {f.target for f in provider.credential_files}
    ]
    with scratch_settings({"HEARTH_CHROMIUM": "false"}, "hearth-b") as settings:
        async with local_controller(settings) as lc:
            clis_mgr = lc.ctl.clis
            await clis_mgr.deliver("bench-mem", files, provider.name)
            row = lc.ctl.db.call(lambda d: d.get(CliSandboxRow, "bench-mem"))
            assert row is not None and row.slot is not None
            netns = lc.ctl.service.ipam.slot(row.slot).netns
            await asyncio.sleep(2.0)  # settle: the agent's start-up allocations done
            rss, pss, procs = await asyncio.to_thread(netns_memory, netns)
            print(f"idle CLI sandbox: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB ({procs} processes)")
            await clis_mgr.stop("bench-mem")
            home = clis_mgr.home_of("bench-mem")
            size = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
            _, _, left = await asyncio.to_thread(netns_memory, netns)
            print(f"stopped CLI sandbox: {left} processes, 0 MiB; its home on disk {size / 1024:.1f} KiB")
            await clis_mgr.delete("bench-mem")


async def via_api(provider: Provider, n: int, concurrent: int) -> None:
    """Through hearth's prompt API (a real controller, CLI sandbox and agent; the model-API stand-in behind the
    internet stand-in) for a running CLI sandbox, a stopped one and none, against the same CLI run directly on the
    host (on the stand-in's internet, the person's-machine namespace, resolving through its DNS)."""
    from hearth.standins import promptapi
    from hearth.standins.standin import SYSTEM_BUNDLE

    spec = parse_prompt_section(provider.agent_document()["prompt"])
    async with promptapi.world("hearth-bp", {"HEARTH_POOL_SIZE": "cli:1"}) as w:
        inet_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-prompt-ca-"))
        homes: list[Path] = []
        try:
            extra = w.ctl.settings.extra_ca_certs
            (inet_dir / "bundle.pem").write_bytes(SYSTEM_BUNDLE.read_bytes() + Path(extra).read_bytes())
            (inet_dir / "resolv.conf").write_text("nameserver 198.51.100.53\n")
            person = w.inet.person_netns

            homes.append(new_home(provider.name))  # one home, warmed by a first run, as a running sandbox's is

            def host_run() -> Timing:
                home = homes[0]
                env = {**Prompts({}, str(home)).env(spec), "NODE_EXTRA_CA_CERTS": str(extra)}
                env["SSL_CERT_FILE"] = str(inet_dir / "bundle.pem")
                inner = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
                argv = spec.argv(PROMPT, "read_only", None, None)
                wrapped = ["nsenter", f"--net=/run/netns/{person}", "--", "unshare", "--mount", "--propagation"]
                wrapped += ["private", "--", "sh", "-c", inner, str(inet_dir / "resolv.conf"), *argv]
                return run_argv(wrapped, env, home / spec.workspace, spec)

            rows: dict[str, list[Timing]] = {
                "direct (host)": [], "running": [], "stopped": [], "none": [], "pooled": []
            }  # fmt: skip
            await asyncio.to_thread(host_run)
            clis_mgr, pool = w.ctl.ctl.clis, w.ctl.ctl.service.pool
            for i in range(n):
                await pool_ready(pool)
                user = f"bench-p{i}"  # none yet: one comes from the warm pool
                await promptapi.seal(w, user, provider.name)
                hits = pool.hits
                rows["pooled"].append(await api_prompt(w, user, provider.name))
                if pool.hits != hits + 1:
                    raise SystemExit("pooled: the prompt's CLI sandbox did not come from the warm pool")
                await clis_mgr.delete(user)
                await pool_ready(pool)
                clis_mgr.pool = None  # none: a fresh CLI sandbox boots
                user = f"bench-{i}"
                await promptapi.seal(w, user, provider.name)
                try:
                    rows["none"].append(await api_prompt(w, user, provider.name))
                finally:
                    clis_mgr.pool = pool
                rows["running"].append(await api_prompt(w, user, provider.name))
                await w.ctl.ctl.clis.stop(user)
                rows["stopped"].append(await api_prompt(w, user, provider.name))
                rows["direct (host)"].append(await asyncio.to_thread(host_run))
                print("  ".join(f"{k} {v[-1].first_text:.2f}/{v[-1].done:.2f}s" for k, v in rows.items()))
            base = rows["direct (host)"]
            for k, v in rows.items():
                ft, dn = med(v, lambda t: t.first_text), med(v, lambda t: t.done)
                bt, bd = med(base, lambda t: t.first_text), med(base, lambda t: t.done)
                goal = "" if k != "running" else (" meets" if dn <= 1.1 * bd + 0.05 else " misses") + " ≤ 1.1× + 50 ms"
                print(f"API {k:14s} → first text {ft:.3f}s ({ft / bt:.2f}×), → done {dn:.3f}s ({dn / bd:.2f}×){goal}")
            pooled_done, none_done = (med(rows[k], lambda t: t.done) for k in ("pooled", "none"))
            print(f"API pooled vs none (HEARTH_POOL_SIZE=cli:1) → done {pooled_done / none_done:.2f}×")
            clis_mgr.pool = None  # the concurrent figures are those of fresh CLI sandboxes
            await api_concurrent(w, provider.name, concurrent)
        finally:
            shutil.rmtree(inet_dir, ignore_errors=True)
            for h in homes:
                shutil.rmtree(h, ignore_errors=True)


async def pool_ready(pool: Any) -> None:
    """The warm pool full again, no refill booting (it would share the CPU with what is measured next)."""
    pool.refill()
    await pool.wait_filled()
    if not pool.ready("cli"):
        raise SystemExit(f"the warm pool did not fill: {pool.summary()}")


async def api_concurrent(w: Any, provider: str, k: int) -> None:
    """`k` users' prompts at once through the API, each user's CLI sandbox running (a first prompt started it)."""
    from hearth.standins import promptapi

    users = [f"bench-c{i}" for i in range(k)]
    for u in users:
        await promptapi.seal(w, u, provider)
    t0 = time.monotonic()
    await asyncio.gather(*(api_prompt(w, u, provider) for u in users))
    print(f"{k} concurrent prompts through the API, no CLI sandbox yet: all done in {time.monotonic() - t0:.2f}s")
    t0 = time.monotonic()
    runs = await asyncio.gather(*(api_prompt(w, u, provider) for u in users))
    wall = time.monotonic() - t0
    firsts, dones = [t.first_text for t in runs], [t.done for t in runs]
    print(
        f"{k} concurrent prompts through the API, CLI sandboxes running: all done in {wall:.2f}s; first text median "
        f"{statistics.median(firsts):.2f}s p95 {p95(firsts):.2f}s; done median {statistics.median(dones):.2f}s "
        f"p95 {p95(dones):.2f}s"
    )


async def api_prompt(w: Any, user: str, provider: str) -> Timing:
    t0 = time.monotonic()
    r = await w.http.post(f"/api/users/{user}/prompts", json={"provider": provider, "prompt": PROMPT})
    if r.status_code != 202:
        raise SystemExit(f"API: HTTP {r.status_code}: {r.text[:300]}")
    first: float | None = None
    text = ""
    async with w.http.stream("GET", r.json()["stream_url"]) as s:
        event = ""
        async for line in s.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "text":
                first = first if first is not None else time.monotonic() - t0
                text += json.loads(line[6:])["text"]
            elif line.startswith("data: ") and event == "end":
                break
    done = time.monotonic() - t0
    if text != modelapi.ANSWER or first is None:
        raise SystemExit(f"API: text {text!r}")
    return Timing(first, done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5, help="sequential runs per path")
    ap.add_argument("--cli", default="claude_code", choices=["claude_code", "codex", "gemini_cli"])
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--no-memory", action="store_true", help="skip the CLI sandbox memory (starts a controller)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    installed = clis.installed()
    if installed is None:
        raise SystemExit("the pinned CLIs are not installed: run `bash scripts/setup.sh`")
    provider = load()[args.cli]
    bin_dir = installed / "node_modules" / ".bin"
    print(f"{provider.name}: {cli_version(bin_dir, provider.cli.bin) if provider.cli else '-'}")
    instrument()
    latency(provider, args.n, args.concurrent, bin_dir)
    try:
        import hearth.api.prompts  # noqa: F401 - the controller's prompt API (issue 23 items 1-4)
    except ImportError:
        print("prompt → done for a stopped CLI sandbox and for none: not measured (no controller prompt API here)")
    else:
        asyncio.run(via_api(provider, args.n, args.concurrent))
    if not args.no_memory:
        asyncio.run(memory(provider))


if __name__ == "__main__":
    main()
