"""One prompt's CLI process in the user's CLI sandbox (hearth_agent/promptrun.py starts it): run the provider's CLI
non-interactively, map its JSON lines to hearth events and push them to the controller (docs/prompts.md).

The CLI runs from argv only (never a shell) in its own session (process group), in HOME/<workspace>; the prompt on
stdin or as one argument. One thread per pipe reads (stdout line by line, stderr's tail kept for the reason), one
waits for the exit (or the deadline), one pushes batches: nothing polls. Backpressure: when the unsent buffer is
full the stdout reader waits, so the CLI's pipe fills and the CLI blocks; text beyond `max_answer_bytes` is dropped
(one truncation marker), so a flooding CLI costs the controller a bounded answer while its pipe keeps draining.
Cancel, timeout and exit all end the whole process tree (the group and every descendant found in /proc).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
from typing import IO, Any

from hearth_agent import homefs
from hearth_agent.contract.redaction import redact
from hearth_agent.controller import Outbox, PushFailed
from hearth_agent.inotify import Watch
from hearth_agent.proctree import kill_tree
from hearth_agent.promptdef import PromptSpec, map_line
from hearth_agent.providerdef import ProviderDef
from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)

log = logging.getLogger("hearth_agent")
MAX_LINE = 1 << 20  # one JSON line; a longer one is skipped
MAX_PENDING = 256 * 1024  # unsent event bytes before the reader waits (backpressure)
MAX_BATCH = 192 * 1024  # bytes per push (the callback server takes ≤ 1 MiB)
PUSH_SPACING = 0.06  # s between pushes: within the callback server's per-source rate (20/s)
STDERR_TAIL = 8192
FINAL_BUDGET = 300.0  # s the final batch is retried (outlasts a controller restart)
TRUNCATED = "\n[hearth: the answer was truncated here: it exceeded {n} bytes]"


def _digest(data: bytes | None) -> bytes | None:
    return None if data is None else hashlib.sha256(data).digest()


@dataclass
class Run:
    id: str
    provider: ProviderDef
    spec: PromptSpec
    argv: list[str]
    stdin: bytes | None
    timeout: float
    max_answer: int
    raw: bool
    outbox: Outbox
    home: str
    state: str = "starting"  # starting | running | exited
    exit_code: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cancelled: bool = False
    timed_out: bool = False
    seq: int = 0
    text_bytes: int = 0
    raw_bytes: int = 0
    truncated: bool = False
    done_sent: bool = False
    answer_tail: str = ""
    errors: list[str] = field(default_factory=list)
    conversation: str | None = None
    model: str | None = None
    stderr_tail: bytes = b""
    sent: int = 0
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _pending_raw: list[str] = field(default_factory=list)
    _pending_bytes: int = 0
    _final: dict[str, Any] | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reader_done: bool = False
    _before: dict[str, bytes | None] = field(default_factory=dict)
    _creds: dict[str, Any] | None = None  # rewritten credential files waiting for the next push
    _watch: Watch | None = None
    _files_lock: threading.Lock = field(default_factory=threading.Lock)  # one comparison at a time: pushed once

    # ---- the CLI ------------------------------------------------------------------------------
    def start(self, env: dict[str, str], cwd: str) -> None:
        self._before = {f.target: _digest(self._read(f.target)) for f in self.provider.files}
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: a cancel ends every process it started
            close_fds=True,
        )
        self.state = "running"
        threads = [self._read_stdout, self._read_stderr, self._wait, self._push]
        dirs = sorted({os.path.dirname(os.path.join(self.home, f.target)) for f in self.provider.files})
        try:
            self._watch = Watch(dirs)  # a refresh during a long prompt goes to the controller at once
            threads.append(self._watch_credentials)
        except OSError:
            self._watch = None  # compared when the CLI exits only
        if self.stdin is not None:
            threads.append(self._write_stdin)
        for fn in threads:
            threading.Thread(target=fn, name=f"prompt-{fn.__name__}", daemon=True).start()

    def _watch_credentials(self) -> None:
        assert self._watch is not None
        while self._watch.wait():
            # handed to the pusher before the comparison's lock is let go: otherwise the CLI's exit could compare
            # (nothing new), end the prompt and have its final batch pushed while these files were still in hand
            with self._files_lock:
                creds = self._compare()
                if creds is None:
                    continue
                with self._cond:
                    self._creds = creds
                    self._cond.notify_all()
            log.info("credential files rewritten by the CLI", extra={"prompt_id": self.id})

    def _read(self, target: str) -> bytes | None:
        try:
            return homefs.read_file(self.home, target, homefs.MAX_FILE)
        except homefs.PathRefused:
            return None

    def _write_stdin(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(self.stdin or b"")
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.close()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL:]

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[bytes] = self.proc.stdout
        skipping = False
        while True:
            line = out.readline(MAX_LINE)
            if not line:
                break
            whole = line.endswith(b"\n")
            if skipping or (not whole and len(line) >= MAX_LINE):
                skipping = not whole  # over-long: skipped up to its newline
                continue
            self._line(line)
        with self._cond:
            self._reader_done = True
            self._cond.notify_all()

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text.strip():
            return
        events: list[dict[str, Any]] = []
        try:
            mapped = map_line(self.spec.rules, json.loads(text))
        except ValueError:
            mapped = None  # not JSON: only in the raw stream
        if mapped is not None:
            self.conversation = mapped.conversation or self.conversation
            self.model = mapped.model or self.model
            for ev in mapped.events:
                events += self._bounded(ev)
        raw = None
        if self.raw and self.raw_bytes + len(text) <= self.max_answer:
            self.raw_bytes += len(text)
            raw = text
        self._enqueue(events, raw)

    def _bounded(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        kind = ev["type"]
        if kind == "error":
            self.errors.append(str(ev["message"]))
        if kind == "done":
            if self.done_sent:
                return []
            self.done_sent = True
            text = str(ev.get("text", ""))
            if len(text.encode()) > self.max_answer:
                ev = {
                    "type": "done",
                    "text": text.encode()[: self.max_answer].decode(errors="ignore"),
                    "truncated": True,
                }
            return [ev]
        if kind != "text":
            return [ev]
        if self.truncated:
            return []
        size = len(str(ev["text"]).encode())
        if self.text_bytes + size > self.max_answer:
            self.truncated = True
            return [{"type": "text", "text": TRUNCATED.format(n=self.max_answer), "truncated": True}]
        self.text_bytes += size
        self.answer_tail = (self.answer_tail + str(ev["text"]))[-500:]
        return [ev]

    def _enqueue(self, events: list[dict[str, Any]], raw: str | None) -> None:
        size = sum(len(json.dumps(e)) for e in events) + (len(raw) if raw else 0)
        if not size:
            return
        with self._cond:
            while self._pending_bytes > MAX_PENDING and not self._final and self.state != "exited":
                self._cond.wait()  # backpressure: the CLI's pipe fills meanwhile
            for ev in events:
                self.seq += 1
                self._pending.append({**ev, "seq": self.seq})
            if raw is not None:
                self._pending_raw.append(raw)
            self._pending_bytes += size
            self._cond.notify_all()

    def _wait(self) -> None:
        assert self.proc is not None
        try:
            self.exit_code = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            log.warning("prompt timed out", extra={"prompt_id": self.id, "timeout": self.timeout})
        kill_tree(self.proc)  # what it left behind too (and the pipes they hold)
        if self._watch is not None:
            self._watch.close()
        self.exit_code = self.proc.wait()
        with self._cond:
            while not self._reader_done:
                if not self._cond.wait(10.0):
                    break
        self.state = "exited"
        self._finish()

    def cancel(self) -> bool:
        if self.state == "exited" or self.proc is None:
            return False
        self.cancelled = True
        threading.Thread(target=kill_tree, args=(self.proc,), name="prompt-cancel", daemon=True).start()
        return True

    # ---- the end ------------------------------------------------------------------------------
    def _finish(self) -> None:
        stderr = redact(self.stderr_tail.decode("utf-8", errors="replace"), 2000)
        said = " ".join([*self.errors, stderr])
        signin = next((m.group(0) for p in self.spec.needs_signin if (m := p.search(said))), None)
        final: dict[str, Any] = {"exit_code": self.exit_code, "conversation_id": self.conversation}
        final |= {"model": self.model, "truncated": self.truncated, "needs_signin": None}
        extra: list[dict[str, Any]] = []
        if self.cancelled:
            final |= {"status": "cancelled", "step": None, "reason": "cancelled"}
        elif self.timed_out:
            tail = redact(self.answer_tail[-300:], 300) or "(nothing)"
            why = f"[timeout] the CLI gave no complete answer within {self.timeout:g} s; its last output: {tail}"
            final |= {"status": "timed_out", "step": "timeout", "reason": why}
        elif self.exit_code == 0 and not (self.errors and not self.done_sent):
            final |= {"status": "completed", "step": None, "reason": None}
            if not self.done_sent:
                extra.append({"type": "done"})  # no final answer of its own: the controller's is the text so far
        else:
            last = redact(self.errors[-1], 500) if self.errors else ""
            if signin is not None:
                step, why = "credentials", f"[credentials] the CLI says its sign-in is unusable: {last or stderr}"
                final["needs_signin"] = redact(last or signin, 300)
            elif self.errors:
                step, why = "provider_api", f"[provider API] {last}"
            else:
                step, why = "cli", f"[CLI] exited with status {self.exit_code}: {stderr or '(no error output)'}"
            final |= {"status": "failed", "step": step, "reason": why}
        if final["status"] != "completed":
            extra.append({"type": "error", "message": final["reason"], "step": final["step"]})
        # a file the CLI rewrote while its sign-in failed is no fresher credential (Claude Code empties its tokens):
        # pushed, it would be sealed as a new version and the needs_signin of the version used would not stick
        final["credentials"] = None if final["needs_signin"] else self._rewritten()
        with self._cond:
            for ev in extra:
                self.seq += 1
                self._pending.append({**ev, "seq": self.seq})
            self._final = final
            self._cond.notify_all()
        log.info("prompt ended", extra={"prompt_id": self.id, "status": final["status"], "code": self.exit_code})

    def _rewritten(self) -> dict[str, Any] | None:
        with self._files_lock:
            return self._compare()

    def _compare(self) -> dict[str, Any] | None:
        """The credential files when the CLI rewrote any (a refresh, a rotation): all of them, valid, whole."""
        files = []
        changed = False
        digests: dict[str, bytes | None] = {}
        for f in self.provider.files:
            data = self._read(f.target)
            if data is None or not data.strip():
                return None
            if f.require_json:
                try:
                    json.loads(data)
                except ValueError:
                    return None
            digests[f.target] = _digest(data)
            changed |= digests[f.target] != self._before.get(f.target)
            files.append({"target": f.target, "mode": f.mode, "data_b64": base64.b64encode(data).decode()})
        if not changed:
            return None
        self._before.update(digests)  # pushed once: only a new change counts
        return {"provider": self.provider.name, "files": files}

    # ---- pushes -------------------------------------------------------------------------------
    def _take(self) -> tuple[list[dict[str, Any]], list[str], dict[str, Any] | None]:
        with self._cond:
            while not self._pending and not self._pending_raw and self._final is None and self._creds is None:
                self._cond.wait()
            events: list[dict[str, Any]] = []
            size = 0
            while self._pending and (not events or size + len(json.dumps(self._pending[0])) <= MAX_BATCH):
                ev = self._pending.pop(0)
                size += len(json.dumps(ev))
                events.append(ev)
            raws: list[str] = []
            while self._pending_raw and (not raws or size + len(self._pending_raw[0]) <= MAX_BATCH):
                raws.append(self._pending_raw.pop(0))
                size += len(raws[-1])
            self._pending_bytes = max(0, self._pending_bytes - size)
            final = self._final if not self._pending and not self._pending_raw else None
            self._cond.notify_all()
            return events, raws, final

    def _push(self) -> None:
        last = 0.0
        while True:
            events, raws, final = self._take()
            wait = last + PUSH_SPACING - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing within the callback server's rate limit; batches grow meanwhile
            body: dict[str, Any] = {"prompt_id": self.id, "events": events}
            if raws:
                body["raw"] = raws
            with self._cond:
                creds, self._creds = self._creds, None
            if creds is not None:
                body["credentials"] = creds
            if final is not None:
                last = final.pop("credentials", None)
                body["final"] = final
                if last is not None:
                    body["credentials"] = last
            try:
                self.outbox.post("prompt", body, FINAL_BUDGET if final is not None else 120.0)
                self.sent += len(events)
            except PushFailed as exc:
                log.warning("prompt events not delivered", extra={"prompt_id": self.id, "error": str(exc)})
                if final is not None:
                    return
            last = time.monotonic()
            if final is not None:
                return
