"""`isolation="process"`: an in-process component run in a process of its own, measured.

    >>> @component(cpu=1, mem_gib=2, isolation="process")
    ... def fit(rows: list[float]) -> float: ...

The step stays one Prefect task run of the flow run (its state, retries, timeout and
persisted result are the task's, in the flow's process); only the component's function
runs in a child process, forked from a forkserver that has planflow and Prefect
imported already, so a child starts in milliseconds rather than seconds. Pure-Python
CPU-bound components run in parallel this way (each child has its own interpreter
lock), native thread pools are limited to the component's own declaration (the whole
child is the component), and the child is measured:

- peak memory: the child's resident-set high-water mark during the call, less what the
  child held before it (interpreter, imports, the unpickled inputs). That is what the
  component itself added, the figure a thread of the flow's process would add too;
  `peak_rss_bytes` keeps the child's whole peak.
- CPU seconds: user + system time of the call, over all its threads and the processes
  it waited for.

The function, its inputs and its output travel by cloudpickle (what Prefect uses to
persist results); what cannot be pickled fails the step with its name, the value's
type and the fix. A child that dies (killed, out of memory, a crash in native code)
fails the step with how it ended. Inside the child `print` works; Prefect's run
context (`get_run_logger`) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cloudpickle
from threadpoolctl import threadpool_limits

from planflow.runtime.cpulimits import THREAD_ENV_VARS, limited, threads_for
from planflow.runtime.step_process import StepProcess

# Imported once by the forkserver, so that every child has them already.
PRELOAD = ["planflow.core.component", "planflow.runtime.isolation"]
POLL_SECONDS = 0.2  # how often the parent checks that a child it waits for still lives
EXIT_SECONDS = 10.0  # a child that sent its outcome has this long to exit
GIB = 2**30
FIX_PICKLE = (
    "Fix: return/pass plain data (numbers, strings, lists, dicts, arrays, DataFrames) or objects "
    "pickle can copy (no open locks, files, sockets or connections among their attributes: the "
    "error above names the one that is not), or run this step in the flow's process with "
    "isolation='thread'"
)


class IsolationError(RuntimeError):
    """A process-isolated step could not run or report: the message names the step,
    what went wrong and the fix."""


@dataclass(frozen=True)
class Usage:
    """What one process-isolated run of a component used."""

    pid: int
    started_at: float  # Unix time of the call's start
    finished_at: float
    cpu_seconds: float
    peak_rss_bytes: int  # the child's high-water mark during the call
    baseline_rss_bytes: int  # what the child held before its inputs were unpickled

    @property
    def wall_seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def peak_mem_bytes(self) -> int:
        """The memory the component's inputs and its own work took at their peak."""
        return max(0, self.peak_rss_bytes - self.baseline_rss_bytes)

    @property
    def peak_mem_gib(self) -> float:
        return self.peak_mem_bytes / GIB

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_seconds": self.wall_seconds, "peak_mem_bytes": self.peak_mem_bytes}


class UsageLog:
    """Per step, the Usage of its latest attempt, how many attempts its task made (Prefect's
    `retries`) and how long the last one took, put on the dispatcher's records (as `usage`,
    `peak_mem_gib`, `attempts` and, after a retry, `ran_seconds`: what the history reads)
    before its listeners hear of the step's end."""

    def __init__(self) -> None:
        self.by_step: dict[str, Usage] = {}
        self.attempts: dict[str, int] = {}
        self.last_seconds: dict[str, float] = {}

    def attempted(self, step: str, seconds: float) -> None:
        """One attempt of `step`'s function ended (returned or raised) after `seconds`."""
        self.attempts[step] = self.attempts.get(step, 0) + 1
        self.last_seconds[step] = seconds

    def put_on(self, record: Any) -> None:
        """Put the latest Usage of the record's step on it (a finished step's record); after
        retries, the last attempt's time is what it ran (the earlier attempts and Prefect's
        retry delays are not the component's duration)."""
        usage = self.by_step.get(record.step)
        if usage is not None:
            record.usage, record.peak_mem_gib = usage, usage.peak_mem_gib
        attempts = self.attempts.get(record.step, 0)
        if attempts > 1:
            record.attempts = attempts
            if record.ran_seconds is None:
                record.ran_seconds = self.last_seconds[record.step]


def step_function(step: str, fn: Callable[..., Any], cpu: float, isolation: str, log: UsageLog) -> Callable[..., Any]:
    """`fn` as the task of step `step` runs it: in this process with its native thread
    pools limited (cpulimits.py), or in a process of its own (`isolation="process"`).
    Wrapped with functools.wraps: Prefect reads the original's signature, and the
    cache key the original's source."""
    if isolation == "process":

        def run(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return run_isolated(step, fn, args, kwargs, cpu, log)
            finally:
                log.attempted(step, time.perf_counter() - began)

        if inspect.iscoroutinefunction(fn):

            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await asyncio.to_thread(run, *args, **kwargs)

            return functools.wraps(fn)(run_async)
        return functools.wraps(fn)(run)

    if inspect.iscoroutinefunction(fn):

        async def limited_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                with limited(cpu):
                    return await fn(*args, **kwargs)
            finally:
                log.attempted(step, time.perf_counter() - began)

        return functools.wraps(fn)(limited_async)

    def limited_sync(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            with limited(cpu):
                return fn(*args, **kwargs)
        finally:
            log.attempted(step, time.perf_counter() - began)

    return functools.wraps(fn)(limited_sync)


# -- the parent's side -----------------------------------------------------------------
_context_lock = threading.Lock()


def _context() -> Any:
    """The forkserver context, its preload set on first use (nothing happens at import)."""
    with _context_lock:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context


_warm_lock = threading.Lock()
_warming: threading.Thread | None = None
WARM_SECONDS = 120.0  # the most a process-isolated step waits for the forkserver's start


def warm_forkserver() -> None:
    """Start the forkserver on a thread of its own (once per process) when an in-process
    run with isolated steps starts (runner.py), beside its reads and its plan: it
    imports planflow and Prefect (1.5-7 s here), and a step that started it itself paid
    that inside its own time and its `timeout_seconds` (a 0.1 s step with
    timeout_seconds=2 timed out at 7.4 s). A run whose first step is isolated waits for
    it before that step (`forkserver_ready`)."""
    global _warming
    with _warm_lock:
        if _warming is None:
            _warming = threading.Thread(target=_first_child, name="planflow-forkserver", daemon=True)
            _warming.start()


def _first_child() -> None:
    """One child that does nothing: the forkserver answers its first fork once its
    imports are done (starting it alone returns at once, before them)."""
    try:
        _context()  # the preload set
        child = StepProcess(target=_nothing, name="planflow-forkserver-warm")
        child.start()
        child.join(WARM_SECONDS)
    except Exception:  # noqa: BLE001 - the first isolated step starts it, and says why it cannot
        return


def _nothing() -> None:
    return None


def forkserver_is_ready() -> bool:
    """Whether an isolated step can be handed to its task without waiting (no start under way)."""
    warming = _warming
    return warming is None or not warming.is_alive()


def forkserver_ready(timeout: float = WARM_SECONDS) -> None:
    """Wait (at most `timeout`) for `warm_forkserver`'s start; called before an isolated
    step is handed to its task (by a thread of its own, executors._SubmittedLater), so
    that the wait is not the step's."""
    warming = _warming
    if warming is not None:
        warming.join(timeout)


def _payload(step: str, fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> bytes:
    try:
        return cloudpickle.dumps((fn, args, dict(kwargs)))
    except Exception as exc:
        culprit = f"its function {fn.__qualname__}"
        for name, value in [*((f"argument {i}", v) for i, v in enumerate(args)), *kwargs.items()]:
            try:
                cloudpickle.dumps(value)
            except Exception:
                culprit = f"its input '{name}' (a {_type_name(value)})"
                break
        raise IsolationError(
            f"step '{step}' (isolation='process'): {culprit} cannot be pickled to reach the step's "
            f"process: {type(exc).__name__}: {exc}. {FIX_PICKLE}"
        ) from exc


_live_lock = threading.Lock()
_live: set[Any] = set()  # the isolated steps' processes running now
_stopped: set[int] = set()  # pids killed by kill_isolated_children: not the OOM killer's work


def kill_isolated_children() -> int:
    """Kill the process of every isolated step running now (the run was interrupted, or its
    server lost: the process is going down, and its waits for those steps would keep it
    up until they end, Ctrl-C taking a minute); returns how many. Their steps fail as
    killed, and their threads end."""
    with _live_lock:
        children = list(_live)
    for child in children:
        with contextlib.suppress(Exception):  # it ended meanwhile
            if child.is_alive():
                _stopped.add(child.pid)
                child.kill()
    return len(children)


def run_isolated(
    step: str, fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any], cpu: float, log: UsageLog | None = None
) -> Any:
    """Call `fn(*args, **kwargs)` in a child process; return its output. The child's
    Usage goes into `log` (also when the call raised); the call's own exception is
    raised here as it was raised there."""
    payload = _payload(step, fn, args, kwargs)
    context = _context()
    receive, send = context.Pipe(duplex=False)
    env = {**os.environ, **dict.fromkeys(THREAD_ENV_VARS, str(threads_for(cpu)))}
    child = StepProcess(  # its process does not run the parent's script again (step_process.py)
        target=_child_main,
        args=(send, step, threads_for(cpu), payload, list(sys.path), os.getcwd(), env),
        name=f"planflow-step-{step}",
    )
    try:
        with _live_lock:
            _live.add(child)
        child.start()
        send.close()
        message = _receive(step, child, receive)
        child.join(EXIT_SECONDS)
    finally:
        with _live_lock:
            _live.discard(child)
            _stopped.discard(child.pid)  # a later child given the same pid is judged afresh
        if child.pid is not None and child.is_alive():  # the wait ended early (a timeout) or it hangs on exit
            child.kill()
            child.join(EXIT_SECONDS)
        send.close()
        receive.close()
    try:
        kind, value, detail, usage = cloudpickle.loads(message)
    except Exception as exc:
        raise IsolationError(
            f"step '{step}' (isolation='process'): its output could not be unpickled in the flow's "
            f"process: {type(exc).__name__}: {exc}. {FIX_PICKLE}"
        ) from exc
    if usage is not None and log is not None:
        log.by_step[step] = usage
    if kind == "ok":
        return value
    if kind == "raised" and isinstance(value, BaseException):
        value.add_note(f"(raised in the step's own process {usage.pid if usage else '?'}:)\n{detail}")
        raise value
    raise IsolationError(detail)


def _receive(step: str, child: Any, receive: Connection) -> bytes:
    """The child's one message; a child that ends without sending fails the step."""
    while True:
        try:
            if receive.poll(POLL_SECONDS):
                return receive.recv_bytes()
        except EOFError:
            pass  # the child closed its end: it is gone
        if not child.is_alive():
            if receive.poll(0):
                try:
                    return receive.recv_bytes()
                except EOFError:
                    pass
            child.join(EXIT_SECONDS)
            ending = (
                "was stopped: the run was interrupted or lost its server"
                if child.pid in _stopped
                else _ending(child.exitcode)
            )
            raise IsolationError(
                f"step '{step}' (isolation='process'): its process {child.pid} {ending} before it returned an output"
            )


def _ending(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else -exitcode
        hint = " (the kernel's OOM killer sends SIGKILL when memory runs out: see `dmesg`)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# -- the child's side ------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Set the kernel's high-water mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(was_reset: bool) -> int:
    if was_reset:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_seconds() -> float:
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def _child_main(
    send: Connection, step: str, threads: int, payload: bytes, path: list[str], cwd: str, env: dict[str, str]
) -> None:
    """Run the call and send back (kind, value, detail, usage), pickled once."""
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(env)  # the thread variables first: libraries the call loads read them
    # measured from before its inputs are unpickled: their copy in this process is the
    # step's own (a large input frame needs its memory here, beside what the work adds)
    was_reset = _reset_peak()
    baseline = _rss_bytes()
    try:
        os.chdir(cwd)
        fn, args, kwargs = cloudpickle.loads(payload)
    except BaseException as exc:
        detail = f"step '{step}' (isolation='process'): its function or inputs could not be loaded in its process: "
        send.send_bytes(cloudpickle.dumps(("error", None, f"{detail}{type(exc).__name__}: {exc}", None)))
        return
    del payload
    cpu0, started = _cpu_seconds(), time.time()
    try:
        with threadpool_limits(limits=threads):  # the whole process is this component
            output = fn(*args, **kwargs)
            if inspect.isawaitable(output):
                output = asyncio.run(output)
        outcome: tuple[str, Any, str] = ("ok", output, "")
    except BaseException as exc:
        outcome = ("raised", exc, traceback.format_exc())
        if type(exc).__name__ == "MissingContextError":  # get_run_logger and its kin
            outcome = (
                "error",
                None,
                f"step '{step}' (isolation='process') asked for Prefect's run context ({exc}){_asked_at(exc)}, "
                "which its own process does not have. Fix: use print() or logging.getLogger(__name__) there "
                "(their lines reach the terminal), or isolation='thread'",
            )
    usage = Usage(os.getpid(), started, time.time(), _cpu_seconds() - cpu0, _peak_bytes(was_reset), baseline)
    try:
        send.send_bytes(_outcome_bytes(step, outcome, usage))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the flow's process stopped waiting (the step's timeout): nothing to tell, nothing to print


def _asked_at(exc: BaseException) -> str:
    """Where the step's own code made the call that raised `exc` (its last frame outside
    Prefect and planflow): " at FILE:LINE in FUNCTION", or "". Said instead of the child's
    traceback, which the terminal showed cut (a run's error hides tracebacks there)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _library_frame(f.filename)]
    return f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""


def _library_frame(filename: str) -> bool:
    """A frame of Prefect's, planflow's or the standard library's code."""
    import sysconfig  # noqa: PLC0415

    import prefect  # noqa: PLC0415 (imported already where this runs)

    homes = [Path(prefect.__file__ or "").resolve().parent, Path(__file__).resolve().parents[1]]
    homes.append(Path(sysconfig.get_paths()["stdlib"]).resolve())
    where = Path(filename).resolve()
    return any(where.is_relative_to(home) for home in homes)


def _outcome_bytes(step: str, outcome: tuple[str, Any, str], usage: Usage) -> bytes:
    kind, value, detail = outcome
    try:
        return cloudpickle.dumps((kind, value, detail, usage))
    except Exception as exc:
        if kind == "ok":
            detail = (
                f"step '{step}' (isolation='process') returned a {_type_name(value)} that cannot be pickled "
                f"({type(exc).__name__}: {exc}); an isolated step's output must travel back to the flow's "
                f"process, where it is also stored so that a retry of the run can skip the step. {FIX_PICKLE}"
            )
        else:  # the exception itself cannot travel: send its text
            detail = f"step '{step}' raised {_type_name(value)}: {value}\n{detail}"
        return cloudpickle.dumps(("error", None, detail, usage))
