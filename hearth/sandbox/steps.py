"""One runner for every driver's start: a list of named checks, then a list of named steps `Step(name, do, undo)`.

The model is the Firecracker Go SDK's handler lists (`handlers.go`: the validation handlers run first and acquire
nothing, then the init handlers in order). Here:

- `checks` (the preflight, "the validation list") run first, in order, before anything is acquired;
- each `Step`'s `do` runs in order; its `undo` is registered the moment its `do` returned;
- when a `do` fails (or the boot is cancelled), the registered undos run in reverse order. A step marked `partial`
  (its `do` may fail having acquired part of what it makes: a veth pair without its port, a process that exited
  while booting) has its own undo run first, too; a step whose failure means "not mine" (a namespace that appeared
  concurrently) is not `partial`. An undo that finds its resource already gone (FileNotFoundError,
  ProcessLookupError) succeeded; any other undo failure is logged and the unwinding goes on;
- a step marked `stage` reports its name to the caller's `mark` when it is done (the boot stages the session service
  times: "namespace", "process", "kernel"); the runner also records every step's own duration under its name;
- a foreign exception becomes a `DriverError` at the runner's hop that names the failing step; a HearthError keeps
  its words (it already names its hop and fix) and gets the step's name as a note.

On success the undos are dropped: the sandbox owns its resources, and the driver's `destroy(spec)` removes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hearth.errors import DriverError, HearthError, Hop
from hearth.sandbox.base import no_marks

log = logging.getLogger("hearth.sandbox.steps")

GONE: tuple[type[BaseException], ...] = (FileNotFoundError, ProcessLookupError)
"""What an undo may raise when its resource is already gone: success."""

Mark = Callable[[str], None]


@dataclass(frozen=True)
class Check:
    """A preflight check: acquires nothing, raises (a HearthError naming the fix) when the start cannot work."""

    name: str
    check: Callable[[], None]


@dataclass(frozen=True)
class Step:
    """One named step of a start: `do` acquires something, `undo` gives it back (safe after a partial `do`)."""

    name: str
    do: Callable[[], Awaitable[object]]
    undo: Callable[[], Awaitable[object]] | None = None
    stage: bool = False  # report `name` to the caller's mark() when done (a boot stage the session times)
    partial: bool = False  # `undo` also runs when `do` failed (it may have acquired part of what it makes)


def preflight(checks: Sequence[Check], *, what: str, hint: str = "", hop: Hop = Hop.DRIVER) -> None:
    """Run the validation list in order; the first failure raises, naming its check."""
    for c in checks:
        try:
            c.check()
        except HearthError as exc:
            exc.add_note(f"preflight check: {c.name}")
            raise
        except Exception as exc:
            raise DriverError(hop, f"{what}: check '{c.name}' failed: {type(exc).__name__}: {exc}", hint) from exc


async def run(
    steps: Sequence[Step],
    mark: Mark = no_marks,
    *,
    what: str,
    hint: str = "",
    hop: Hop = Hop.DRIVER,
    checks: Sequence[Check] = (),
) -> dict[str, float]:
    """Run `checks`, then `steps`; on a failure unwind and raise (see the module's docstring). Returns each step's
    duration in seconds, by name. `what` names the sandbox in errors ("netns sandbox hearth-s3"); `hint` is the fix
    given with a converted foreign exception."""
    preflight(checks, what=what, hint=hint, hop=hop)
    done: list[Step] = []
    timings: dict[str, float] = {}
    for step in steps:
        t0 = time.monotonic()
        try:
            await step.do()
        except BaseException as exc:
            failures = await _unwind([*([step] if step.partial else []), *reversed(done)])
            err = _converted(exc, step, failures, what=what, hint=hint, hop=hop)
            if err is exc:
                raise
            raise err from exc
        timings[step.name] = round(time.monotonic() - t0, 3)
        done.append(step)
        if step.stage:
            mark(step.name)
    log.debug("%s started", what, extra={"steps": timings})
    return timings


async def _unwind(steps: Sequence[Step]) -> list[str]:
    """Each step's undo, in the given order; already gone is success. Returns the undo failures, in words."""
    failures: list[str] = []
    for step in steps:
        if step.undo is None:
            continue
        try:
            await step.undo()
        except GONE:
            pass
        except Exception as exc:
            log.error("undo of step %r failed: %s: %s", step.name, type(exc).__name__, exc)
            failures.append(f"undo of '{step.name}' failed: {type(exc).__name__}: {exc}")
    return failures


def _converted(exc: BaseException, step: Step, failures: list[str], *, what: str, hint: str, hop: Hop) -> BaseException:
    """The error to raise for `exc` in `step`: a HearthError as it is (noted), a cancellation as it is, a foreign
    exception as a DriverError naming the step."""
    if isinstance(exc, HearthError):
        exc.add_note(f"step: {step.name}")
        for f in failures:
            exc.add_note(f)
        return exc
    if not isinstance(exc, Exception):  # cancelled, interrupted: the unwinding is done, the reason stays
        return exc
    during = f" ({'; '.join(failures)})" if failures else ""
    return DriverError(hop, f"{what} failed to start at step '{step.name}': {type(exc).__name__}: {exc}{during}", hint)
