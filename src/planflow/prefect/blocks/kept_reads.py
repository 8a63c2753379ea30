"""A block whose documents this process's runs keep between runs (registry.read_run_blocks):
saving one here drops those kept reads at once, before its event comes back (event_watch.py)."""

from __future__ import annotations

from typing import Any

from planflow.prefect.event_watch import changed_here


class DropsKeptReads:
    """A mixin before `Block`: both of Prefect's save paths (`save`'s sync one, `asave`'s
    async one) tell event_watch that this process changed a block, saved or not."""

    async def _save(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._save(*args, **kwargs)  # type: ignore[misc]
        finally:
            changed_here()

    def _save_sync(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._save_sync(*args, **kwargs)  # type: ignore[misc]
        finally:
            changed_here()
