"""Whether the space's log stream is there, for one PU: an append no stream took makes it look; while the stream is
missing (deleted by an operator) writes are refused and appends wait, until an operator recreates the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from spacegrid.engine.changelog import Changelog, missing_log_message
from spacegrid.engine.events import NO_EVENTS, EventSink
from spacegrid.limits import Limits

log = logging.getLogger("spacegrid.logguard")


class LogGuard:
    """`unavailable(resume)` after an append no stream took (nothing applied): the partitions keep their state and
    writes, and `resume()` is called once appending may work: after `limits.log_unavailable_retry_s` if the stream
    is there (JetStream was electing a leader), else once it is back. `missing` is True meanwhile: the PU refuses
    writes with LogMissing and keeps serving reads and flushing to the store. `on_restored()` runs before the
    appends resume on a recreated log (the PU follows its claims afresh)."""

    def __init__(self, changelog: Changelog, limits: Limits, on_restored: Callable[[], Awaitable[None]]) -> None:
        self.changelog = changelog
        self.limits = limits
        self.on_restored = on_restored
        self.missing = False
        self.events: EventSink = NO_EVENTS
        self.counters = {"log_unavailable": 0, "log_missing_events": 0}
        self._resumes: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def unavailable(self, resume: Callable[[], None]) -> None:
        self.counters["log_unavailable"] += 1
        self._resumes.append(resume)
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="log-guard")

    async def run(self, is_stopping: Callable[[], bool]) -> None:
        """Look for the stream every `limits.log_check_interval_s`, so a PU that does not write sees it missing
        too (`spacegrid repair --recreate-log` waits until every PU has)."""
        while not is_stopping():
            await asyncio.sleep(self.limits.log_check_interval_s)
            # looked at again after the await: an append may have started the watch meanwhile
            if self._task is None and await self._exists() is False and self._task is None:
                self._mark_missing()
                self._task = asyncio.create_task(self._watch(), name="log-guard")

    async def _exists(self) -> bool | None:
        try:
            return await self.changelog.stream_exists()
        except Exception as exc:  # disconnected: the next append or look tells
            log.info("could not look for the log stream (%s)", exc)
            return None

    def _mark_missing(self) -> None:
        if not self.missing:
            self.missing = True
            self.counters["log_missing_events"] += 1
            log.error("%s", missing_log_message(self.changelog.names))
            self.events.emit("log_missing", stream=self.changelog.names.stream)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.limits.log_unavailable_retry_s)
            exists = await self._exists()
            if exists is False:
                self._mark_missing()
                continue
            if exists and self.missing:
                try:
                    await self.on_restored()
                except Exception as exc:
                    log.warning("the log stream is back but its claims can't be followed yet (%s); retrying", exc)
                    continue
                log.warning("the log stream %s is back: appending again", self.changelog.names.stream)
                self.events.emit("log_restored", stream=self.changelog.names.stream)
                self.missing = False
            break
        self._task = None
        resumes, self._resumes = self._resumes, []
        for resume in resumes:
            resume()
