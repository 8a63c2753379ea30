"""A block whose documents this process's runs keep between runs (registry.read_run_blocks):
saving or deleting one here drops those kept reads at once, before its event comes back
(event_watch.py). A document deleted by its id through a client, not by `Block.delete`, is
not seen here: call `event_watch.changed_here()` after it."""

from __future__ import annotations

from typing import Any

from planflow.prefect.event_watch import changed_here


class DropsKeptReads:
    """A mixin before `Block`: both of Prefect's save paths (`save`'s sync one, `asave`'s
    async one) and `delete` tell event_watch that this process changed a block, saved or
    not (an async caller's `delete` returns a coroutine and tells it before the delete
    runs: the delete's event drops the kept reads after)."""

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

    @classmethod
    def delete(cls, name: str, client: Any = None) -> Any:
        try:
            return super().delete(name, client=client)  # type: ignore[misc]
        finally:
            changed_here()
