"""The console's web application: the agent desk and the kiosk screen.

``create_app(target, settings)`` builds a Starlette application that is a client of the
decision server at ``target`` (``grpc_client.ServerTarget``: address, token, TLS) and
never opens the store. Routes, each a handler that calls the server and renders a
template:

=====================  ===========================================================
``GET /agent``         the agent desk (channel ``contact_center``): find a customer
                       by identifier kind and value (``?kind=loyalty_id&value=...``);
                       the profile card and the next best actions, both in the first
                       HTML (no second round trip before they show)
``GET /agent/live``    the page's server-sent events: new profile card and actions
                       when the profile changes anywhere (``decision.console.live``)
``POST /agent/outcome``  an agent's answer for one offer of one decision, sent as
                       outcome events, then the actions again
``GET /kiosk/{kind}/{value}``  the kiosk screen for a scanned card; query parameters
                       are the decision's context (``?country=FR``)
``POST /kiosk/accept``   the customer took an offer: a ``click``
``GET /results``       the results over a time range (``?range=24h|7d|30d`` or
                       ``?from=...&to=...``, UTC; ``&label=click|conversion``): the
                       totals, the funnel per channel, the lift of each experiment arm
                       against the control group and attribution by channel (seven
                       models), in the first HTML (one GetReport); the token needs
                       ``report`` (``decision.console.results``)
``GET /results/chart/{name}``  one of the report's PNG charts for the page's range,
                       pinned in ms (one GetReport with charts per range, shared by the
                       page's images and cached a few minutes: ``ChartCache``)
``GET /results/curves``  the learning curves of the page's range, a fragment the page
                       loads (htmx): each arm's response rate per time bucket, one
                       GetReport per bucket, drawn as inline SVG
``GET|POST /login``, ``POST /logout``  only with a console password
``GET /static/...``    the stylesheet, htmx and its SSE extension (shipped in the package)
=====================  ===========================================================

What the buttons send (each event carries the decision id and the offer; its
``event_id`` is ``console:<decision>:<offer>:<type>``, so a double click or a retry is
applied once):

- agent *Accepted*: ``impression`` + ``click``; *Not interested*: ``impression`` +
  ``dismissal``; *Later*: ``impression`` only. The agent desk records the impression
  when the agent acts, not when the page renders: it re-decides on every change of the
  profile, and counting each render as a contact would exhaust frequency caps on offers
  the customer never heard. An offer the agent answered for was presented.
- kiosk: an ``impression`` for each offer on the screen, sent once the page has gone
  out (it is what the customer sees), and a ``click`` when *Accept* is touched.

Whether the answered offer then leaves the list is the catalog's call (a ``suppress``
policy after ``click`` or ``dismissal``, a ``cooldown``); the list is decided again
after each answer either way.

Errors from the server become a page that says what happened (HTTP 503 when the server
does not answer, 502 when it refuses the console's credentials, 400 for a request it
finds invalid), never a stack trace; in a fragment request the message replaces the
notice area instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from decision.console import DEFAULT_KINDS, live
from decision.console import results as res
from decision.console.grpc_client import (
    DecisionClient,
    ServerError,
    ServerTarget,
    ServerUnavailable,
    Who,
)
from decision.console.security import Access, Guard, safe_next
from decision.console.views import decision_view, format_number, profile_view

log = logging.getLogger("decision.console")

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

#: the agent's answers and the outcome events each sends, in order
ANSWERS = {
    "accepted": ("Accepted", ("impression", "click")),
    "not_interested": ("Not interested", ("impression", "dismissal")),
    "later": ("Later", ("impression",)),
}
MAX_FORM_BYTES = 16 * 1024
ZOOMS = 3  # the learning curves' re-cuts at most (results.zoom): a day to about a minute
CHART_CACHE_S = 300  # a pinned range's charts are kept this long (ChartCache)
CHART_CACHE_ENTRIES = 8  # ... for this many ranges at most (some 250 kB each)
_SHOWN_PROFILES = 1024  # profiles the pages showed last, by version (see _remember)


@dataclass(frozen=True)
class ConsoleSettings:
    """How the console decides and who may use it.

    ``agent_channel`` / ``kiosk_channel``: the catalog channels the two views decide on;
    ``agent_limit`` / ``kiosk_limit``: offers shown (the kiosk shows the best large and
    the rest smaller); ``identifier_kinds``: the kinds offered in the search (the
    server's configured kinds; another kind typed in the URL is the server's to judge);
    ``poll_interval_s``: how often an open customer's profile is read for live updates;
    ``access``: login and cookie rules (``security.Access``).
    """

    agent_channel: str = "contact_center"
    kiosk_channel: str = "kiosk"
    agent_limit: int = 5
    kiosk_limit: int = 3
    identifier_kinds: tuple[str, ...] = DEFAULT_KINDS
    poll_interval_s: float = 0.25
    access: Access = field(default_factory=Access)

    def __post_init__(self) -> None:
        if not 1 <= self.agent_limit <= 100 or not 1 <= self.kiosk_limit <= 100:
            raise ValueError("agent_limit and kiosk_limit: 1 to 100")
        if not 0.02 <= self.poll_interval_s <= 60:
            raise ValueError("poll_interval_s: 0.02 to 60 seconds")
        if not self.identifier_kinds:
            raise ValueError("identifier_kinds: at least one kind")


class _CachedStatic(StaticFiles):
    """Static files with a long cache lifetime: their URLs carry a content hash."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def _static_versions() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in STATIC.iterdir() if p.is_file()}


def create_app(target: ServerTarget, settings: ConsoleSettings | None = None) -> Starlette:
    """The console for the decision server at ``target``."""
    settings = settings or ConsoleSettings()
    client = DecisionClient(target)
    watcher = live.ProfileWatcher(client, settings.poll_interval_s)
    versions = _static_versions()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals.update(
        static=lambda name: f"/static/{name}?v={versions.get(name, '0')}",
        server=target.address + (" (TLS)" if target.secured else ""),
        login=settings.access.login,
    )
    env.filters.update(num=format_number, money=lambda x: f"{x:,.2f}")
    templates = Jinja2Templates(env=env)
    shown: OrderedDict[str, object] = OrderedDict()

    def remember(version: str, profile) -> None:
        """The profile a page showed, by version: its live stream marks what changed
        since (bounded: an old entry only costs the marks)."""
        shown[version] = profile
        shown.move_to_end(version)
        while len(shown) > _SHOWN_PROFILES:
            shown.popitem(last=False)

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        response = templates.TemplateResponse(request, template, context, status_code=status)
        response.headers["cache-control"] = "no-store"
        return response

    def fragment(template: str, **context) -> str:
        return env.get_template(template).render(**context)

    def who_from(params) -> Who | None:
        kind = (params.get("kind") or settings.identifier_kinds[0]).strip()
        value = (params.get("value") or "").strip()
        return Who(kind, value) if value else None

    def live_url(who: Who, version: str) -> str:
        return "/agent/live?" + urlencode({"kind": who.kind, "value": who.value, "v": version})

    # ------------------------------------------------------------------ agent
    async def agent(request: Request) -> Response:
        who = who_from(request.query_params)
        page = {"kinds": settings.identifier_kinds, "kind": who.kind if who else
                settings.identifier_kinds[0], "value": who.value if who else "",
                "channel": settings.agent_channel}
        if who is None:
            return render(request, "agent.html", **page)
        try:
            profile, reply = await asyncio.gather(
                client.profile(who), client.decide(who, settings.agent_channel,
                                                   settings.agent_limit))
        except ServerError as exc:
            return error_page(request, exc, page)
        if profile is None:
            return render(request, "agent.html", 404, **page, notice={
                "level": "warn", "title": "No such customer",
                "text": f"No profile holds the {who.kind} '{who.value}'. Check the "
                        "identifier, or search by another kind."})
        version = live.profile_version(profile)
        remember(version, profile)
        return render(request, "agent.html", **page, live_url=live_url(who, version),
                      p=profile_view(profile, who.kind, who.value),
                      d=decision_view(reply, settings.agent_channel))

    async def agent_live(request: Request) -> Response:
        who = who_from(request.query_params)
        if who is None:
            return Response("kind and value are required", 400)
        shown_version = request.query_params.get("v", "")
        return StreamingResponse(
            _follow(who, shown_version, shown.get(shown_version)),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _follow(who: Who, version: str, before):
        """The stream of one agent page: fragments whenever the profile changes."""
        banner = False
        yield "retry: 1000\n\n"  # reconnect after a second if the console restarts
        async with watcher.watch(who) as watch:
            while True:
                snapshot = await watch.next_after(version, live.KEEPALIVE_S)
                if snapshot is None:
                    yield ": keep-alive\n\n"
                    continue
                version = snapshot.version
                if snapshot.error is not None:
                    banner = True
                    yield live.sse_event("status", fragment("_status.html",
                                                            e=_explain(snapshot.error, target)))
                    continue
                if banner:
                    banner = False
                    yield live.sse_event("status", "")
                if snapshot.profile is None:
                    yield live.sse_event("profile", fragment(
                        "_gone.html", kind=who.kind, value=who.value))
                    yield live.sse_event("actions", "")
                    before = None
                    continue
                try:
                    reply = await client.decide(who, settings.agent_channel,
                                                settings.agent_limit)
                except ServerError as exc:
                    banner = True
                    version = ""  # decide again at the next poll
                    yield live.sse_event("status", fragment("_status.html",
                                                            e=_explain(exc, target)))
                    continue
                remember(version, snapshot.profile)
                yield live.sse_event("profile", fragment(
                    "_profile.html", p=profile_view(snapshot.profile, who.kind, who.value,
                                                    before)))
                yield live.sse_event("actions", fragment(
                    "_actions.html", d=decision_view(reply, settings.agent_channel),
                    kind=who.kind, value=who.value))
                before = snapshot.profile

    async def agent_outcome(request: Request) -> Response:
        form = await _form(request)
        who = who_from(form)
        answer = ANSWERS.get(form.get("choice", ""))
        offer_id, decision_id = form.get("offer_id", ""), form.get("decision_id", "")
        htmx = request.headers.get("hx-request") == "true"
        if who is None or answer is None or not offer_id or not decision_id:
            return Response("kind, value, offer_id, decision_id and choice "
                            "(accepted, not_interested or later) are required", 400)
        label, outcomes = answer
        try:
            duplicate = False
            for outcome in outcomes:
                duplicate = await client.record(who, settings.agent_channel, offer_id,
                                                decision_id, outcome) or duplicate
            if not htmx:  # a plain form post (no JavaScript): back to the page
                return RedirectResponse("/agent?" + urlencode(
                    {"kind": who.kind, "value": who.value}), 303)
            reply = await client.decide(who, settings.agent_channel, settings.agent_limit)
        except ServerError as exc:
            if not htmx:
                return error_page(request, exc, {"kinds": settings.identifier_kinds,
                                                 "kind": who.kind, "value": who.value})
            return _retarget(fragment("_flash.html", notice=_explain(exc, target)))
        name = form.get("name") or offer_id
        notice = {"level": "ok", "title": f"{label}: {name}",
                  "text": ("already recorded for this decision" if duplicate else
                           "recorded as " + " + ".join(outcomes))
                  + f" (decision {decision_id})."}
        html = (fragment("_actions.html", d=decision_view(reply, settings.agent_channel),
                         kind=who.kind, value=who.value)
                + fragment("_flash.html", notice=notice, oob=True))
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    # ------------------------------------------------------------------ kiosk
    async def kiosk(request: Request) -> Response:
        who = Who(request.path_params["kind"], request.path_params["value"])
        context = _context(request.query_params.multi_items())
        try:
            reply = await client.decide(who, settings.kiosk_channel, settings.kiosk_limit,
                                        context)
        except ServerError as exc:
            return error_page(request, exc, None, kiosk=True)
        d = decision_view(reply, settings.kiosk_channel)
        response = render(request, "kiosk.html", d=d, kind=who.kind, value=who.value)
        if reply.offers:  # the impressions: once the screen has gone out
            response.background = BackgroundTask(
                _record_all, who, settings.kiosk_channel, reply.decision_id,
                [o.offer_id for o in reply.offers], "impression")
        return response

    async def _record_all(who: Who, channel: str, decision_id: str, offer_ids: list[str],
                          outcome: str) -> None:
        try:
            await asyncio.gather(*(client.record(who, channel, o, decision_id, outcome)
                                   for o in offer_ids))
        except ServerError as exc:
            log.warning("console: %s not recorded for decision %s: %s", outcome,
                        decision_id, exc)

    async def kiosk_accept(request: Request) -> Response:
        form = await _form(request)
        who = who_from(form)
        offer_id, decision_id = form.get("offer_id", ""), form.get("decision_id", "")
        if who is None or not offer_id or not decision_id:
            return Response("kind, value, offer_id and decision_id are required", 400)
        try:
            await client.record(who, settings.kiosk_channel, offer_id, decision_id, "click")
        except ServerError as exc:
            return HTMLResponse(fragment("_kiosk_failed.html", e=_explain(exc, target)),
                                headers={"cache-control": "no-store"})
        html = fragment("_kiosk_accepted.html", name=form.get("name") or offer_id,
                        hero=form.get("hero") == "1")
        if request.headers.get("hx-request") != "true":
            return render(request, "kiosk_done.html", name=form.get("name") or offer_id)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    # ------------------------------------------------------------------ results
    def report_refused(exc: ServerError) -> dict:
        e = _explain(exc, target, needs="the report role: the results are the server's "
                     "report (GetReport), every channel's and arm's figures")
        if exc.code == "PERMISSION_DENIED":
            e["title"] = "The console's token needs the report role"
        return e

    async def results(request: Request) -> Response:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        page = {"presets": res.PRESETS, "labels": res.LABELS, "tab": "results",
                "models": res.ATTRIBUTION_MODELS}
        try:
            rng = res.parse_range(request.query_params, now_ms)
        except res.RangeError as exc:
            return render(request, "results.html", 400, **page,
                          rng=res.parse_range({}, now_ms), form=dict(request.query_params),
                          notice={"level": "warn", "title": "That range cannot be shown",
                                  "text": str(exc)})
        form = {"from": rng.from_value, "to": rng.to_value}
        try:
            reply = await client.report(rng.from_ms, rng.to_ms, ("channel",),
                                        attribution=True, label=rng.label)
        except ServerError as exc:
            e = report_refused(exc)
            return render(request, "results.html", e["status"], **page, rng=rng, form=form,
                          notice=e)
        fetched = time.perf_counter()
        view = res.results_view(rng, res.parse_report(reply.json))
        response = render(request, "results.html", **page, rng=rng, form=form, r=view)
        response.headers["server-timing"] = _timing(started, fetched)
        return response

    async def results_curves(request: Request) -> Response:
        """The learning curves of a pinned range: a fragment the page loads (htmx)."""
        started = time.perf_counter()
        try:
            rng = res.parse_pinned(request.query_params)
        except res.RangeError as exc:
            return PlainTextResponse(str(exc), 400)
        try:
            buckets, kind, reports = await _curves(rng)
        except ServerError as exc:
            return HTMLResponse(fragment("_curves.html", rng=rng, notice=report_refused(exc)),
                                headers={"cache-control": "no-store"})
        fetched = time.perf_counter()
        html = fragment("_curves.html", rng=rng, c=res.curves_page(buckets, kind, reports))
        return HTMLResponse(html, headers={"cache-control": "no-store",
                                           "server-timing": _timing(started, fetched)})

    async def _curves(rng: res.Range):
        """The learning curves' buckets and one small report per bucket (by arm). Equal
        buckets are cut again over the part that holds decisions while fewer than 3
        do (``results.zoom``), at most ``ZOOMS`` times."""
        days = res.parse_report((await client.report(
            rng.from_ms, rng.to_ms, ("day",), label=rng.label)).json)
        buckets, kind = res.plan_buckets(rng, [
            str(r["key"]) for r in (days.get("by") or {}).get("day", [])
            if r.get("decisions")])
        reports: list[dict] = []
        for level in range(ZOOMS + 1):
            replies = await _first_error(*(client.report(b.from_ms, b.to_ms, ("arm",),
                                                         label=rng.label) for b in buckets))
            reports = [res.parse_report(r.json) for r in replies]
            narrower = res.zoom(buckets, reports) if kind == "equal" else None
            if narrower is None or level == ZOOMS:
                break
            buckets = res.split(*narrower)
        return buckets, kind, reports

    async def results_chart(request: Request) -> Response:
        """One of the report's PNG charts for a pinned range (``ChartCache``)."""
        name = request.path_params["name"]
        if name not in res.CHARTS:
            return PlainTextResponse(f"no chart {name!r}: one of {', '.join(res.CHARTS)}",
                                     404)
        try:
            rng = res.parse_pinned(request.query_params)
        except res.RangeError as exc:
            return PlainTextResponse(str(exc), 400)
        started = time.perf_counter()
        try:
            charts = await chart_cache.get(rng)
        except ServerError as exc:
            e = report_refused(exc)
            return PlainTextResponse(f"{e['title']}: {e['text']}", e["status"])
        if name not in charts:
            return PlainTextResponse(f"the report has no {name}", 404)
        return Response(charts[name], media_type="image/png", headers={
            "cache-control": f"private, max-age={CHART_CACHE_S}",
            "server-timing": _timing(started, time.perf_counter())})

    chart_cache = ChartCache(client)

    # ------------------------------------------------------------------ login
    async def login(request: Request) -> Response:
        access = settings.access
        next_url = safe_next(request.query_params.get("next"))
        if not access.login:
            return RedirectResponse(next_url, 303)
        if request.method == "GET":
            return render(request, "login.html", next=next_url)
        form = await _form(request)
        next_url = safe_next(form.get("next"))
        if not access.check_password(form.get("password", "")):
            await asyncio.sleep(1.0)  # slows guessing; the comparison is constant-time
            return render(request, "login.html", 401, next=next_url,
                          error="That password is not the console's.")
        response = RedirectResponse(next_url, 303)
        response.headers["set-cookie"] = access.cookie_header(access.session_cookie(),
                                                              access.session_s)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.headers["set-cookie"] = settings.access.cookie_header("", 0)
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/agent", 303)

    # ------------------------------------------------------------------ errors
    def error_page(request: Request, exc: ServerError, page: dict | None,
                   kiosk: bool = False) -> Response:
        e = _explain(exc, target)
        if kiosk:
            return render(request, "kiosk_error.html", e["status"], e=e)
        page = page or {"kinds": settings.identifier_kinds,
                        "kind": settings.identifier_kinds[0], "value": ""}
        return render(request, "agent.html", e["status"], **page, notice=e)

    async def crashed(request: Request, exc: Exception) -> Response:
        # the page says so; the traceback goes to the log (uvicorn writes it after this)
        log.error("console: %s %s failed: %r", request.method, request.url.path, exc)
        return render(request, "error.html", 500, notice={
            "level": "error", "title": "The console failed",
            "text": "Something went wrong in the console itself; its log has the details."})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            chart_cache.close()
            await watcher.close()
            await client.close()

    routes = [
        Route("/", home),
        Route("/agent", agent),
        Route("/agent/live", agent_live),
        Route("/agent/outcome", agent_outcome, methods=["POST"]),
        Route("/kiosk/{kind}/{value}", kiosk),
        Route("/kiosk/accept", kiosk_accept, methods=["POST"]),
        Route("/results", results),
        Route("/results/curves", results_curves),
        Route("/results/chart/{name}", results_chart),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", _CachedStatic(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, access=settings.access)],
                    exception_handlers={Exception: crashed})
    app.state.client = client
    app.state.watcher = watcher
    app.state.settings = settings
    return app


class ChartCache:
    """The report's charts per pinned range, fetched once for the page's several
    images (one GetReport with charts, shared by the requests that arrive while it
    runs), kept ``CHART_CACHE_S`` for ``CHART_CACHE_ENTRIES`` ranges. A failed fetch is
    not kept: the next request asks again."""

    def __init__(self, client: DecisionClient):
        self.client = client
        self._entries: OrderedDict[tuple, tuple[float, asyncio.Future]] = OrderedDict()

    async def get(self, rng) -> dict[str, bytes]:
        key = (rng.from_ms, rng.to_ms, rng.label)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:
            task = asyncio.ensure_future(self._fetch(rng))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen
            entry = self._entries[key] = (now + CHART_CACHE_S, task)
            while len(self._entries) > CHART_CACHE_ENTRIES:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        try:
            return await asyncio.shield(entry[1])
        except ServerError:
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise

    def close(self) -> None:
        for _, task in self._entries.values():
            task.cancel()
        self._entries.clear()

    async def _fetch(self, rng) -> dict[str, bytes]:
        reply = await self.client.report(rng.from_ms, rng.to_ms, ("channel",),
                                         attribution=True, charts=True, label=rng.label)
        return dict(reply.charts)


def _timing(started: float, fetched: float) -> str:
    """A Server-Timing header: the time waiting for the server, and the rest."""
    return (f"report;dur={1000 * (fetched - started):.1f}, "
            f"render;dur={1000 * (time.perf_counter() - fetched):.1f}")


async def _first_error(*calls):
    """The calls' results, in order, once all are done; the first failure raised (the
    others are awaited, not left running)."""
    out = await asyncio.gather(*calls, return_exceptions=True)
    for x in out:
        if isinstance(x, BaseException):
            raise x
    return out


def _explain(exc: ServerError, target: ServerTarget,
             needs: str = "the roles decide and ingest") -> dict:
    """A server error as a notice for a person: a status for the page, a title, a text.
    ``needs``: what the console's token needs for the page that asked."""
    where = target.address
    if isinstance(exc, ServerUnavailable):
        return {"level": "error", "status": 503, "title": "The decision server is not answering",
                "text": f"No answer from the decision server at {where} ({exc.code}: "
                        f"{exc.details}).", "hint": "Reload this page once it is back."}
    if exc.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return {"level": "error", "status": 502, "title": "The decision server refused the "
                "console", "text": f"{exc.code}: {exc.details}. The console's token "
                f"(--token-file) must belong to a client with {needs}."}
    if exc.code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        return {"level": "warn", "status": 400, "title": "The server could not answer this",
                "text": f"{exc.code}: {exc.details}"}
    return {"level": "error", "status": 502, "title": "The decision server failed",
            "text": f"{exc.code}: {exc.details}"}


def _retarget(html: str) -> HTMLResponse:
    """A fragment for the notice area, whatever the request targeted (htmx)."""
    return HTMLResponse(html, headers={"hx-retarget": "#flash", "hx-reswap": "outerHTML",
                                       "cache-control": "no-store"})


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form (the pages post nothing else), first value per field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def _context(items) -> dict[str, str | float | bool]:
    """Query parameters as a decision's context: true/false and finite numbers are
    typed, anything else is a string (as ``decision ask --context``)."""
    out: dict[str, str | float | bool] = {}
    for key, raw in items:
        if raw in ("true", "false"):
            out[key] = raw == "true"
            continue
        try:
            x = float(raw)
        except ValueError:
            out[key] = raw
        else:
            out[key] = x if math.isfinite(x) else raw
    return out
