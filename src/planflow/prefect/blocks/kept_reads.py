"""A block whose documents this process's runs keep between runs (registry.read_run_blocks):
saving or deleting one here drops those kept reads at once, before its event comes back
(event_watch.py). A document deleted by its id through a client, not by `Block.delete`, is
not seen here: call `event_watch.changed_here()` after it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any

from planflow.prefect.event_watch import changed_here


class DropsKeptReads:
    """A mixin before `Block`: both of Prefect's save paths (`save`'s sync one, `asave`'s
    async one) and both deletes (`delete`, which an async caller gets as a coroutine, and
    `adelete`) tell event_watch that this process changed a block, once the change is
    done (saved or not)."""

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
    async def adelete(cls, name: str, client: Any = None) -> Any:
        try:
            return await super().adelete(name, client=client)  # type: ignore[misc]
        finally:
            changed_here()

    @classmethod
    def delete(cls, name: str, client: Any = None, **kwargs: Any) -> Any:
        try:
            done = super().delete(name, client=client, **kwargs)  # type: ignore[misc]
        except BaseException:
            changed_here()
            raise
        if inspect.isawaitable(done):  # called from async code: the delete runs when awaited
            return _then_changed(done)
        changed_here()
        return done


async def _then_changed(deleting: Awaitable[Any]) -> Any:
    try:
        return await deleting
    finally:
        changed_here()
