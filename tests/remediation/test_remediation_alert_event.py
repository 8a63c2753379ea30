"""The remediation flows' one parameter, `alert` (an AlertEvent): what the automations'
templates render from a real triggering event, with Prefect's own server-side templating
(the code RunDeployment runs), and what the model reads from it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from prefect.server.events.actions import RunDeployment
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
from pydantic import ValidationError

from planflow.monitoring.bridge import Alert, Webhook, to_event
from planflow.remediation.alert import ALERT_TEMPLATE, EVENT_TEMPLATE, AlertEvent, run_parameters


def render(template: dict, event: ReceivedEvent) -> AlertEvent:
    """What the automation's RunDeployment action passes to the flow run for `event`."""
    parameters = run_parameters(template)
    RunDeployment(source="selected", deployment_id=uuid.uuid4(), parameters=parameters)  # the server's check
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(
        parameters, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event})
    )
    assert list(rendered) == ["alert"], rendered
    return AlertEvent.model_validate(rendered["alert"])


def bridge_event(status: str, labels: dict[str, str]) -> ReceivedEvent:
    starts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    alert = Alert(status=status, labels=labels, startsAt=starts, endsAt=starts, fingerprint="f00d")
    return ReceivedEvent.model_validate(to_event(alert, Webhook(alerts=[alert]), time.time()))


@pytest.mark.parametrize("status", ["firing", "resolved"])
def test_an_alert_event_from_the_bridge_renders_into_the_typed_parameter(status):
    labels = {"alertname": "PlanflowWorkPoolNotReady", "work_pool": "docker", "severity": "critical"}
    event = bridge_event(status, labels)
    alert = render(ALERT_TEMPLATE, event)
    assert alert.event_id == event.id
    assert alert.event == f"planflow.alert.{status}" and alert.current_status == status
    assert alert.resource_id == "prefect.work-pool.docker" and alert.pool == "docker"
    assert alert.labels == labels and alert.name_or("-") == "PlanflowWorkPoolNotReady"
    assert alert.event_occurred == event.occurred
    assert alert.seconds_since_trigger() > 0 and alert.recheck == 0


def test_a_failed_flow_run_event_renders_into_the_typed_parameter():
    run_id = uuid.uuid4()
    event = ReceivedEvent(
        occurred=datetime.now(UTC),
        event="prefect.flow-run.Failed",
        resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
        related=[{"prefect.resource.id": "prefect.tag.planflow", "prefect.resource.role": "tag"}],
        id=uuid.uuid4(),
    )
    alert = render(EVENT_TEMPLATE, event)
    assert alert.flow_run_id == str(run_id) and alert.event == "prefect.flow-run.Failed"
    assert alert.labels == {} and alert.pool == ""


def test_a_re_check_is_the_same_alert_resolved_without_its_trigger_time():
    alert = AlertEvent(event_id=uuid.uuid4(), event="planflow.alert.firing", labels={"work_queue": "default"})
    follow_up = alert.recheck_as_resolved("PlanflowLateRunBacklog", "busy", 3)
    assert (follow_up.current_status, follow_up.recheck, follow_up.pool) == ("resolved", 3, "busy")
    assert follow_up.event_id == alert.event_id and follow_up.queue == "default"
    assert follow_up.seconds_since_trigger() is None
    assert AlertEvent.model_validate(follow_up.model_dump(mode="json")) == follow_up  # as a re-check run passes it


def test_a_misspelt_field_is_named():
    with pytest.raises(ValidationError, match=r"alert_name\s+Extra inputs are not permitted"):
        AlertEvent.model_validate({"alert_name": "PlanflowWorkPoolNotReady"})
    with pytest.raises(ValidationError, match=r"status\s+Input should be 'firing' or 'resolved'.*'fired'"):
        AlertEvent(status="fired")
