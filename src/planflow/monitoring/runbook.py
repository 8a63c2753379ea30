"""The alerts' runbook that planflow ships (RUNBOOK.md in this package): one section per
alert, `## <AlertName>`, read by `planflow runbook [ALERT]` in any project, and named by
every alert's `runbook` annotation (its `runbook_url` points at a copy the team reads)."""

from __future__ import annotations

from importlib import resources


def text() -> str:
    return (resources.files("planflow.monitoring") / "RUNBOOK.md").read_text(encoding="utf-8")


def sections(runbook: str | None = None) -> dict[str, str]:
    """Alert name -> its section (heading included), in the runbook's order."""
    found: dict[str, str] = {}
    for part in (runbook if runbook is not None else text()).split("\n## ")[1:]:
        name = part.split("\n", 1)[0].strip()
        found[name] = "## " + part.rstrip() + "\n"
    return found


def section(alert: str) -> str:
    """The section of `alert` (its name in any case, or its anchor); KeyError naming the
    alerts there are otherwise."""
    every = sections()
    by_key = {name.lower(): body for name, body in every.items()}
    body = by_key.get(alert.strip().lower().lstrip("#"))
    if body is None:
        raise KeyError(f"no alert '{alert}' in planflow's runbook. Fix: one of {', '.join(every)}")
    return body
