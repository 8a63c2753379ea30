"""Run the service: one replica in this process, or N replicas behind HAProxy.

`planflow serve fraud-risk --replicas 2 --port 8000` starts replicas on 8001 and 8002
(`python -m planflow.serving`, each its own process) and HAProxy on 8000, which
health-checks them on /readyz and retries a request that a replica fails to answer on
the other one (`retry-on` a dead replica's failures and 503, `option redispatch`): a replica killed
mid-request costs the client nothing, as each replica writes an answer in one piece
(single_write.py). A replica that exits is started again.

The replicas' and HAProxy's logs (and HAProxy's configuration) go to the planflow state
folder's `serve/PORT/`, private to the user: the last service's stay there to be read after
it stopped, and the next one on that port replaces them (a folder per start in the system's
temporary folder piled up, one per `planflow serve`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from planflow.ops.processes import log_tail, port_in_use, spawn, stop_process, wait_until
from planflow.serving.app import BODY_SECONDS, create_app
from planflow.serving.loader import ServedRuns, missing_deployment
from planflow.serving.path import OnlinePath, find_online_path
from planflow.serving.probes import answers
from planflow.serving.single_write import ServingProtocol
from planflow.settings import StatePaths, make_private_dir, write_private

READY_TIMEOUT_SECONDS = 60.0
SUPERVISE_SECONDS = 0.5


class ServeError(RuntimeError):
    """The service could not start; the message says why and what to do. `code`: the exit
    code (2: an option names what does not exist)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _check_deployment(path: OnlinePath, served: ServedRuns) -> None:
    """ServeError (code 2) when --deployment names no deployment of the pipeline: such a
    service started and was never ready, telling to run a deployment that does not exist."""
    if served.deployment:
        problem = asyncio.run(missing_deployment(path.pipeline.name, served.deployment))
        if problem:
            raise ServeError(problem, code=2)


def serve_one(
    target: str, host: str, port: int, poll_seconds: float, max_body_bytes: int, served: ServedRuns = ServedRuns()
) -> None:
    """Serve `target` in this process until interrupted (a replica of `serve_replicas`, or
    a pod of its own: each checks the deployment it is given, one read at its start)."""
    if port_in_use(host, port):  # before anything loads, in the words of --replicas
        raise ServeError(
            f"port {port} on {host} is already in use (another `planflow serve`?). "
            "Fix: stop it, or choose another --port"
        )
    path = find_online_path(target)
    _check_deployment(path, served)
    _say_swaps()
    app = create_app(path, poll_seconds=poll_seconds, max_body_bytes=max_body_bytes, served=served)
    print(f"serving {target} on http://{host}:{port} (one process: its log is this terminal; Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, http=ServingProtocol, log_level="warning", timeout_graceful_shutdown=5)


def _say_swaps() -> None:
    """The service's own lines (which run it loaded, each swap, a run that cannot be read)
    in its log, this terminal or a replica's file: uvicorn's level (warning) kept them out,
    so a promote, a demote or a new run changed the model without a line saying so."""
    logger = logging.getLogger("planflow.serving")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def replica_arguments(
    target: str, host: str, port: int, poll_seconds: float, max_body_bytes: int, served: ServedRuns
) -> list[str]:
    """The command line of one replica (`python -m planflow.serving ...`, __main__.py)."""
    arguments = [target, "--host", host, "--port", str(port)]
    arguments += ["--poll-seconds", str(poll_seconds), "--max-body-bytes", str(max_body_bytes)]
    arguments += ["--deployment", served.deployment] if served.deployment else []
    return arguments + [part for tag in served.tags for part in ("--tag", tag)]


def _refusal(status: int, detail: str, condition: str, log_format: bool = False) -> str:
    """An HAProxy rule answering `status` with the replicas' JSON `detail` when `condition`."""
    kind = "lf-string" if log_format else "string"
    return (
        f"http-request return status {status} content-type application/json {kind} "
        f'"{{\\"detail\\":\\"{detail}\\"}}" if {{ {condition} }}'
    )


HEADER_ROOM = 16384  # request headers beside a whole body in HAProxy's buffer
MAX_REWRITE = 1024  # what HAProxy keeps free in the buffer for rewriting headers (tune.maxrewrite)
MAX_BUFSIZE = 64 << 20  # a larger buffer per stream is not taken (HAProxy refuses 256 MB and more)


def haproxy_bufsize(max_body_bytes: int) -> int | None:
    """HAProxy's buffer for a whole body up to `max_body_bytes` with its headers, so that a
    longer one is seen as longer (HAProxy's default is 16 KiB); None past MAX_BUFSIZE:
    HAProxy's default then, and a streamed body over the limit is refused by a replica.

    >>> haproxy_bufsize(262144), haproxy_bufsize(1 << 30)
    (279552, None)
    """
    size = max(16384, max_body_bytes + HEADER_ROOM + MAX_REWRITE)
    return size if size <= MAX_BUFSIZE else None


def haproxy_config(host: str, port: int, replica_ports: list[int], max_body_bytes: int, max_batch: int) -> str:
    """HAProxy in front of the replicas. It answers two refusals itself, with the replicas'
    JSON: a body whose Content-Length is over `max_body_bytes` (a replica refusing it closed
    the connection with the body unsent, and HAProxy, still sending, often lost the 413:
    no answer for 8 of 20 such requests), and a body that takes longer than BODY_SECONDS
    to arrive (HAProxy's own HTML 408 after 30 s, the replica's JSON one after 10 s)."""
    servers = "\n".join(f"  server replica{i} {host}:{p} check" for i, p in enumerate(replica_ports, start=1))
    too_slow = f"request body not received within {BODY_SECONDS:g} s. Fix: send it at once"
    fix = f"Fix: send at most {max_batch} records per request"
    too_large = f"request body of %[req.hdr(content-length)] bytes is over the limit of {max_body_bytes} bytes. {fix}"
    refuse_too_large = _refusal(413, too_large, f"req.hdr_val(content-length) gt {max_body_bytes}", log_format=True)
    # A body sent in chunks has no Content-Length: it is buffered (http-buffer-request, in a
    # buffer larger than the limit) and refused by what arrived. A replica refused it and
    # closed, and HAProxy lost its 413 for 2-11 of 20 such bodies of 0.3-5 MB.
    too_large_chunked = f"request body is over the limit of {max_body_bytes} bytes. {fix}"
    bufsize = haproxy_bufsize(max_body_bytes)
    refuse_too_large_chunked = _refusal(413, too_large_chunked, f"req.body_size gt {max_body_bytes}") if bufsize else ""
    # a request's whole body up to the limit fits the buffer, so a longer one is seen as longer
    buffer = f"  tune.bufsize {bufsize}\n  tune.maxrewrite {MAX_REWRITE}\n" if bufsize else ""
    return f"""# Generated by `planflow serve --replicas {len(replica_ports)}`.
global
  maxconn 2048
{buffer}
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout check 2s
  timeout http-request {BODY_SECONDS:g}s
  http-error status 408 content-type application/json string "{{\\"detail\\":\\"{too_slow}\\"}}"
  # a request a replica fails to answer (connection refused or reset, an empty or broken
  # answer: a replica that died; a 503 while it loads a model) is sent again, to another
  # replica. Not a 500 (the model raised: it would raise again) nor a response timeout (a
  # slow model): `all-retryable-errors` ran a failing request's model 4 times
  retries 3
  retry-on conn-failure empty-response junk-response 502 503 504
  option redispatch 1
  option http-buffer-request
  # a new connection to a replica for each request: when a replica dies with a kept-alive
  # connection that HAProxy reuses, HAProxy does not retry the request sent on it but
  # closes the client's connection without an answer, for the client to retry (what HTTP
  # allows there; httpx does not): 1 of 207 requests was lost so when a replica was killed
  # under load. On a new connection the same death is an empty answer, which it retries.
  option http-server-close

frontend planflow_serving
  bind {host}:{port}
  {refuse_too_large}
  {refuse_too_large_chunked}
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  # three missed checks before a replica is taken out: a busy replica answers a check
  # late, and with both out HAProxy would answer 503 itself; a dead one is skipped at
  # once anyway (a refused connection is retried on the other replica)
  default-server inter 500ms fall 3 rise 1
{servers}
"""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise ServeError("haproxy is not installed. Fix: make services (or apt-get install -y haproxy)")
    return found


def logs_folder(port: int) -> Path:
    """The folder of the service on `port`: the state folder's `serve/PORT/`, private to
    the user, emptied of the last service's files."""
    folder = make_private_dir(StatePaths.discover().home / "serve" / str(port))
    for old in (*folder.glob("*.log"), folder / "haproxy.cfg"):
        old.unlink(missing_ok=True)
    return folder


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve_replicas(
    target: str,
    host: str,
    port: int,
    replicas: int,
    poll_seconds: float,
    max_body_bytes: int,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    served: ServedRuns = ServedRuns(),
) -> None:
    """Run `replicas` replicas behind HAProxy until interrupted (SIGINT or SIGTERM)."""
    if replicas < 2:
        raise ServeError(f"--replicas {replicas}: a load balancer needs at least 2. Fix: --replicas 2")
    ports = [port + i for i in range(1, replicas + 1)]
    busy = [p for p in (port, *ports) if port_in_use(host, p)]
    if busy:  # before the logs folder is emptied: a service running there keeps its logs
        raise ServeError(
            f"port {', '.join(map(str, busy))} on {host} is already in use (another `planflow serve`?); "
            f"--replicas {replicas} --port {port} needs ports {port}-{ports[-1]}. "
            "Fix: stop it, or choose another --port"
        )
    online = find_online_path(target)  # a bad target fails here, once, not in every replica
    _check_deployment(online, served)
    haproxy = haproxy_binary()
    work = logs_folder(port)
    config = work / "haproxy.cfg"
    write_private(config, haproxy_config(host, port, ports, max_body_bytes, online.max_batch))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(replica_port: int):
        command = [sys.executable, "-m", "planflow.serving"]
        command += replica_arguments(target, host, replica_port, poll_seconds, max_body_bytes, served)
        return spawn(command, work / f"replica-{replica_port}.log", env, Path.cwd(), die_with_parent=True)

    signal.signal(signal.SIGTERM, _terminate)
    processes = {p: start(p) for p in ports}
    balancer = None
    try:
        for p in processes:
            if not wait_until(lambda p=p: answers(f"http://{host}:{p}/healthz", 1.0), ready_timeout):
                raise ServeError(
                    f"replica on port {p} did not answer /healthz within {ready_timeout:.0f} s:\n"
                    f"{log_tail(work / f'replica-{p}.log')}"
                )
        balancer = spawn([haproxy, "-db", "-f", str(config)], work / "haproxy.log", env, work, die_with_parent=True)
        if not wait_until(lambda: answers(f"http://{host}:{port}/healthz", 1.0) or balancer.poll() is not None, 10):
            raise ServeError(f"haproxy did not listen on {host}:{port}:\n{log_tail(work / 'haproxy.log')}")
        if balancer.poll() is not None:
            raise ServeError(f"haproxy exited: {log_tail(work / 'haproxy.log')}")
        print(
            f"serving {target} on http://{host}:{port} (replicas on {', '.join(map(str, ports))}; logs in {work})",
            flush=True,
        )
        while True:
            for p, process in list(processes.items()):
                if process.poll() is not None:  # a replica died: its twin answers meanwhile
                    print(f"replica on port {p} exited ({process.returncode}); starting it again", flush=True)
                    processes[p] = start(p)
            if balancer.poll() is not None:
                raise ServeError(f"haproxy exited: {log_tail(work / 'haproxy.log')}")
            wait_until(lambda: False, SUPERVISE_SECONDS)
    finally:
        if balancer is not None:
            stop_process(balancer, timeout=5)
        for process in processes.values():
            stop_process(process, timeout=10)
