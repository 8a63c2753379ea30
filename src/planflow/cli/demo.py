"""`planflow demo` (every example pipeline, then a failing run becoming an alert event)
and `planflow demo heal` (a failover and a rescale, end to end)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from planflow.cli.common import (
    console,
    ensure_server,
    fail,
    rule,
    run_logs_off_the_terminal,
    run_url,
    say,
    ui_url,
    warn,
)
from planflow.cli.interrupt import sigterm_as_ctrl_c
from planflow.cli.pipelines import (
    RunFailed,
    RunInterrupted,
    execute,
    failed_run,
    interrupted,
    load,
    parse_params,
    prepare,
    print_summary,
)
from planflow.core import discovery
from planflow.monitoring.events import wait_for_event
from planflow.monitoring.prefect_api import auth_headers
from planflow.monitoring.thresholds import ThresholdsError
from planflow.ops import services
from planflow.prefect.blocks import ensure_defaults
from planflow.remediation import automations, oom
from planflow.remediation import scenarios as heal
from planflow.settings import StatePaths

FAILING_PIPELINE = "demo-failure"  # the monitoring loop's run that fails on purpose
SCENARIOS = ("failover", "rescale", "oom", "all")  # "all": failover and rescale (oom needs Docker)

demo_app = typer.Typer(
    help="Demos on the embedded stack: the example pipelines (no sub-command), `heal` (failover and rescale)."
)


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    param: list[str] = typer.Option([], "--param", "-p", help="Override for every pipeline KEY=VALUE."),
    monitoring: bool = typer.Option(
        True, help="Also start the monitoring stack (fast profile) and show a failing run turning into an alert event."
    ),
) -> None:
    """Start the embedded server, register blocks, run every example pipeline; then
    show the monitoring loop: a run that fails on purpose becomes a Prefect event."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = parse_params(param)
    found = discovery.discover()
    if monitoring and not any(item.name == FAILING_PIPELINE for item in found):  # before anything starts
        fail(
            f"the demo's monitoring loop runs the pipeline '{FAILING_PIPELINE}' (planflow's repository: "
            f"pipelines/{FAILING_PIPELINE}.yaml), which this project does not have. Fix: `planflow demo "
            "--no-monitoring`, or run the demo from planflow's repository",
            2,
        )
    url = ensure_server()
    ensure_defaults()
    ui = ui_url(url)
    if monitoring:
        try:
            started = services.up(profile="fast")
        except services.ServicesError as exc:
            warn(f"monitoring skipped: {exc}")
            monitoring = False
        else:
            say("monitoring: " + ", ".join(f"{n} {s.url}" for n, s in started.items()))
    outcomes = []
    for item in (f for f in found if f.source.startswith("flows.")):
        if item.pipeline is None:
            fail(f"{item.source} failed to load: {item.error}")
        mine = {k: v for k, v in overrides.items() if k in item.pipeline.params}
        flow, values = prepare(item.pipeline, mine)
        rule(item.name)
        try:
            result = execute(item.pipeline, flow, values, "inprocess", show_progress=True)
        except RunInterrupted as exc:  # Ctrl-C: exit 130, not a failure
            interrupted(item.name, exc, url)
        except Exception as exc:  # the flow run failed; Prefect has logged the traceback
            fail(failed_run(item.name, exc, url))
        print_summary(result)
        outcomes.append((item.name, result["flow_run_id"]))
    if monitoring:
        _alert_loop(url)
    rule("done")
    say(f"Prefect UI: {ui}  (each run's plan, planned versus actual and Gantt charts: its Artifacts tab)")
    for name, run_id in outcomes:
        say(f"  {name}: Completed  {run_url(ui, run_id)}")
    if monitoring:
        say(f"  alert events: {ui}/events  ·  Prometheus alerts: {services.status()['prometheus'].url}/alerts")
    say("Next: `planflow demo heal` shows a failover and a rescale. Stop everything with `planflow stack down`.")


@demo_app.command("heal")
def demo_heal(
    scenario: str = typer.Option("all", help="failover, rescale, oom (on the Docker pool) or all (failover, rescale)."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for each step before giving up."),
) -> None:
    """Self-healing on the embedded stack: a pool loses its worker and planflow fails its
    run over to the backup pool, then resumes it; a pool gets a backlog and planflow
    scales it out and back. Every step goes through Prometheus, Alertmanager, the bridge,
    a Prefect automation and a remediation flow."""
    if scenario not in SCENARIOS:
        fail(f"unknown scenario {scenario!r}: failover, rescale, oom or all")
    sigterm_as_ctrl_c()  # each scenario takes away what it made, also when stopped
    url = ensure_server()
    ui = ui_url(url)
    ensure_defaults()
    paths = StatePaths.discover()
    previous, ports = services.recorded_profile(paths), services.recorded_ports(paths)
    try:
        started = services.up(paths, profile="fast")
    except services.ServicesError as exc:
        fail(f"the monitoring stack is needed: {exc}")
    say("monitoring: " + ", ".join(f"{n} {s.url}" for n, s in started.items()))
    if previous and previous != "fast":  # it was switched without a word, and stayed so
        say(
            f"monitoring: restarted on the fast profile (alerts in seconds) from {previous}; "
            f"back on {previous} at the end"
        )
    try:
        _heal(paths, scenario, timeout, ui)
    finally:
        if previous and previous != "fast":
            try:  # on the ports it had (a failure here must not hide the demo's own end)
                services.up(paths, profile=previous, ports=ports)
                say(f"monitoring: back on the {previous} profile")
            except (services.ServicesError, ThresholdsError) as exc:
                warn(f"monitoring: could not go back to the {previous} profile ({exc}). Fix: planflow stack up")


def _heal(paths: StatePaths, scenario: str, timeout: float, ui: str) -> None:
    """The automations, the remediation worker, then each scenario chosen, and what it did."""
    try:
        applied = automations.apply()
    except automations.AutomationsError as exc:
        fail(str(exc))
    say(
        f"automations: {sum(1 for line in applied if line.startswith(automations.PREFIX))} applied; "
        f"remediation worker pid {automations.worker_up(paths)}"
    )
    logs = paths.home / "demo-heal"
    results = []
    plays = (("failover", heal.failover_scenario), ("rescale", heal.rescale_scenario), ("oom", oom.oom_scenario))
    for name, play in plays:
        if scenario != name and (scenario != "all" or name == "oom"):
            continue
        rule(f"heal: {name}")
        try:
            results.append(play(logs, say=say, timeout=timeout))
        except heal.HealError as exc:
            fail(f"{name}: {exc}")
    rule("done")
    for result in results:
        last = result["timeline"][-1][1] if result["timeline"] else 0
        say(f"  {result['scenario']}: healed in {last:.0f} s on {result['work_pool']}")
        for line in result.get("left_behind", []):
            say(f"    left behind: {line}")
    say(
        f"Remediation runs, their artifacts and events: {ui}/runs?tags=planflow-remediation  ·  "
        f"{ui}/events  ·  worker logs in {logs}"
    )


def _alert_loop(url: str, name: str = FAILING_PIPELINE, timeout: float = 90.0) -> None:
    """Run a pipeline that fails on purpose and wait for its alert's Prefect event."""
    rule(f"monitoring loop: {name} fails on purpose")
    since = datetime.now(UTC)
    fail_on_purpose(url, name)
    say(f"waiting for the alert's Prefect event (up to {timeout:.0f} s) ...")
    event = wait_for_event(
        url, f"planflow.pipeline.{name}", "planflow.alert.firing", since, timeout, headers=auth_headers()
    )
    if event is None:
        fail(
            f"no planflow.alert.firing event for {name} within {timeout:.0f} s; "
            "check `planflow stack status` and Prometheus's /alerts page"
        )
    payload = event.get("payload", {})
    labels = payload.get("labels", {})
    console.print(f"[green]event[/] {event['event']} at {event['occurred']}", highlight=False)
    say(f"  resource: {event['resource'].get('prefect.resource.id')}")
    say(f"  alert:    {labels.get('alertname')} ({labels.get('severity')})")
    say(f"  summary:  {payload.get('annotations', {}).get('summary')}")


def fail_on_purpose(url: str, name: str = FAILING_PIPELINE) -> None:
    """Run `name`, a pipeline that fails on purpose, and say so in one line with the
    address of its log; its traceback goes to that log only, not to the terminal."""
    pipeline = load(name)
    flow, values = prepare(pipeline, {})
    try:
        with run_logs_off_the_terminal():  # its traceback is expected: it stays in the run's log
            execute(pipeline, flow, values, "inprocess", show_progress=False)
    except RunFailed as exc:  # failing is the point
        where = run_url(ui_url(url), exc.flow_run_id, tab="Logs") if exc.flow_run_id else f"{ui_url(url)}/runs"
        say(f"{name} failed as intended: {str(exc).splitlines()[0]} (its log: {where})")
    else:
        fail(f"{name} was meant to fail and did not; check pipelines/{name}.yaml")
