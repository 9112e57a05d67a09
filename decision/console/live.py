"""Live pages: the agent view follows its customer's profile and shows every change.

How a change reaches the page
-----------------------------
A change is made anywhere: an app sends ``seat_change`` through ``Track`` to any server
process sharing the store. The open agent page holds one server-sent-events stream to
the console (htmx's SSE extension); the console polls ``GetProfile`` for the customers
that pages have open, every ``interval_s`` (250 ms by default), one poll loop per
customer however many pages show them. When the profile's bytes differ from what a page
shows, that page's stream decides again (``Decide``) and sends the new profile card and
the new next best actions as HTML fragments, which htmx swaps in: the page changes
within ``interval_s`` plus a Decide and a render (~260-300 ms at 250 ms), no reload.

Why polling and not ``WatchTriggers``: the trigger log carries segment enter/leave and
the catalog's configured event patterns, not every profile write, so a ``seat_change``
that sets an attribute (and can change which offers are eligible) raises no trigger.
Following it would also hold a server thread per stream (a process accepts only half
of its ``--threads`` as subscribers) and needs the ``ingest`` role to read. A
``GetProfile`` is one LMDB read of one profile (tens of microseconds on the server): a
desk of 100 agents with a customer open each costs 400 reads a second. Comparing the
profile's bytes (not just ``updated_at_ms``, whose millisecond two writes can share)
catches every change that GetProfile can show. A change that GetProfile does not show
(the contact history, which it does not return) reaches the page with the next write
to the profile, or with the page's own outcome buttons, which re-decide.

When the server stops answering, the streams send a banner saying so (and clear it
when it answers again); the page keeps what it showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from decision.console.grpc_client import DecisionClient, ServerError, Who
from decision.v1 import decision_pb2 as pb

log = logging.getLogger("decision.console")

#: an SSE comment this often keeps proxies from closing an idle stream, and lets the
#: console notice a closed page
KEEPALIVE_S = 15.0
_LINE_END = re.compile(r"\r\n|\r|\n")  # what ends a line in an event stream


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw: a profile, no profile (None), or an error."""

    version: str
    profile: pb.Profile | None = None
    error: ServerError | None = None


def profile_version(profile: pb.Profile | None) -> str:
    """A short digest of everything GetProfile shows ("none" when there is no profile)."""
    if profile is None:
        return "none"
    return hashlib.blake2b(profile.SerializeToString(deterministic=True),
                           digest_size=8).hexdigest()


def sse_event(event: str, html: str) -> str:
    """One server-sent event whose data is ``html``. Every line of the data gets its own
    ``data:`` field, splitting at every line end the protocol knows (CR, LF, CRLF), so
    no value inside the HTML can end the event or start a field of its own."""
    lines = _LINE_END.split(html)
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


class _Watch:
    """The latest snapshot of one customer, and a way to wait for the next."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.subscribers = 0
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._changed.set()  # wakes every waiter; later waiters wait on a fresh event
        self._changed = asyncio.Event()

    async def next_after(self, version: str, timeout: float) -> Snapshot | None:
        """The first snapshot whose version differs from ``version``; None after
        ``timeout`` seconds without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.snapshot is None or self.snapshot.version == version:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return None
        return self.snapshot


class ProfileWatcher:
    """One poll loop per watched customer, shared by every stream that watches them;
    a loop stops when its last stream closes."""

    def __init__(self, client: DecisionClient, interval_s: float = 0.25):
        self.client = client
        self.interval_s = interval_s
        self._watches: dict[Who, _Watch] = {}

    @property
    def watched(self) -> int:
        return len(self._watches)

    @contextlib.asynccontextmanager
    async def watch(self, who: Who) -> AsyncIterator[_Watch]:
        w = self._watches.get(who)
        if w is None:
            w = self._watches[who] = _Watch()
            w.task = asyncio.create_task(self._poll(who, w), name=f"watch {who.kind}")
        w.subscribers += 1
        try:
            yield w
        finally:
            w.subscribers -= 1
            if w.subscribers == 0:
                del self._watches[who]
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task

    async def _poll(self, who: Who, w: _Watch) -> None:
        while True:
            try:
                profile = await self.client.profile(who)
                snapshot = Snapshot(profile_version(profile), profile)
            except ServerError as exc:
                snapshot = Snapshot(f"error {exc.code}", error=exc)
            except Exception:  # a bug must not leave the pages silently stale
                log.exception("console: polling a profile failed")
                snapshot = Snapshot("error INTERNAL", error=ServerError(
                    "GetProfile", "INTERNAL", "the console failed; see its log"))
            if w.snapshot is None or snapshot.version != w.snapshot.version:
                w.publish(snapshot)
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        for w in list(self._watches.values()):
            if w.task is not None:
                w.task.cancel()
        self._watches.clear()
