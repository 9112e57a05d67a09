"""The right moment, through gRPC against a real server whose clock the test moves:
contact policies over simulated weeks, channel pace (quiet hours move an e-mail to the
morning), delayed actions (a cart reminder fires once, not after a purchase, and
survives a restart)."""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import grpc
import pytest

from decision.core.engine import Engine
from decision.edge.server import create_server, start
from decision.settings import Settings
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import DATA, ident, text

PARIS = ZoneInfo("Europe/Paris")
MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=PARIS)  # 08:00 UTC
HOUR = 3600.0
DAY = 24 * HOUR


class FakeClock:
    """The server's clock, moved by the test."""

    def __init__(self, at: datetime):
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Moments:
    """A real server on a copy of tests/data/moments.toml, with a fake clock."""

    def __init__(self, tmp_path, clock: FakeClock, store=None):
        catalog = tmp_path / "moments.toml"
        if not catalog.exists():
            shutil.copy(DATA / "moments.toml", catalog)
        self.clock = clock
        self.settings = Settings(data_dir=store or tmp_path / "store", catalog_path=catalog,
                                 address="127.0.0.1:0", threads=4)
        self.running = create_server(self.settings, engine=Engine(self.settings, clock=clock))
        start(self.running)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.running.stop(grace=None)

    def decide(self, who: str, channel: str = "web", **kw) -> pb.DecideResponse:
        return self.stub.Decide(pb.DecideRequest(customer=ident(who), channel=channel, **kw),
                                timeout=5)

    def track(self, who: str, type_: str, **kw) -> pb.TrackResponse:
        return self.stub.Track(pb.Event(type=type_, customer=ident(who), **kw), timeout=5)

    def outcome(self, who: str, kind: str, offer: str, channel: str = "web",
                decision_id: str = "") -> None:
        self.track(who, kind, offer_id=offer, channel=channel, decision_id=decision_id)

    def triggers(self, kind: str, wait: float = 1.0, expect: int | None = None) -> list:
        return logged(self.stub, kind, wait, expect)


def logged(stub, kind: str, wait: float = 1.0, expect: int | None = None) -> list:
    """The trigger log's entries of ``kind``, through WatchTriggers: read until
    ``expect`` of them are there (or, with no expectation, until ``wait`` s passed)."""
    deadline = time.monotonic() + wait
    while True:
        seen = []
        try:
            for t in stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=1), timeout=0.3):
                if t.kind == kind:
                    seen.append(t)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if (expect is not None and len(seen) >= expect) or time.monotonic() > deadline:
            return seen


@pytest.fixture
def clock():
    return FakeClock(MONDAY)


@pytest.fixture
def moments(tmp_path, clock):
    m = Moments(tmp_path, clock)
    yield m
    m.close()


# --------------------------------------------------------------------- policies
def test_offer_cap_holds_over_two_weeks_of_simulated_time(moments, clock):
    """Two visits a day, each shown the top offer: no offer is ever shown more than 3
    times in any 7 days; once all three are capped nothing is shown (and explain says
    why); the best one comes back as soon as its first impression slides out."""
    shown: list[tuple[float, str]] = []
    empty_days = set()
    for day in range(14):
        for hour in (0, 8):  # 09:00 and 17:00: past the 1h cooldown
            clock.set(MONDAY + timedelta(days=day, hours=hour))
            answer = moments.decide("ann", limit=1, explain=True)
            if not answer.offers:
                assert {r.offer_id: r.reason.detail.split(":")[0] for r in answer.removed} \
                    == {"bags": "offer-weekly", "shoes": "offer-weekly",
                        "socks": "offer-weekly"}
                empty_days.add(day)
                continue
            offer = answer.offers[0].offer_id
            moments.outcome("ann", "impression", offer, decision_id=answer.decision_id)
            shown.append((clock.now, offer))
    for at, offer in shown:
        window = [o for t, o in shown if at - 7 * DAY < t <= at and o == offer]
        assert len(window) <= 3, (datetime.fromtimestamp(at, PARIS), offer, len(window))
    offers = [o for _, o in shown]
    assert offers[:9] == ["bags"] * 3 + ["shoes"] * 3 + ["socks"] * 3
    assert empty_days == {4, 5, 6, 11, 12, 13}
    day7 = [o for t, o in shown if MONDAY.timestamp() + 7 * DAY <= t]
    assert day7[:3] == ["bags"] * 3  # back as soon as its first impression is 7 days old


def test_explain_names_the_policy_that_removed_each_offer(moments, clock):
    moments.outcome("bob", "impression", "bags")
    clock.advance(60)  # within the hour: cooldown
    answer = moments.decide("bob", explain=True)
    assert [o.offer_id for o in answer.offers] == ["shoes", "socks"]
    [removed] = answer.removed
    assert removed.offer_id == "bags"
    assert removed.reason.code == "POLICY"
    assert removed.reason.detail.startswith("cooldown: ")
    assert "1h" in removed.reason.detail
    assert not moments.decide("bob").removed          # only when asked
    clock.advance(HOUR)                               # cooldown over
    assert moments.decide("bob", explain=True).offers[0].offer_id == "bags"
    # the cooldown is on web and app only: the app counts, e-mail does not
    moments.outcome("bob", "impression", "bags", channel="app")
    assert moments.decide("bob", channel="app").offers[0].offer_id == "shoes"
    assert moments.decide("bob", channel="email").offers[0].offer_id == "bags"


def test_conversion_and_dismissal_suppress_for_their_period(moments, clock):
    moments.outcome("cat", "conversion", "bags")
    moments.outcome("cat", "dismissal", "shoes")
    answer = moments.decide("cat", explain=True)
    assert [o.offer_id for o in answer.offers] == ["socks"]
    reasons = {r.offer_id: r.reason.detail for r in answer.removed}
    assert reasons == {"bags": "after-purchase: suppress for 30d after a conversion",
                       "shoes": "not-interested: suppress for 7d after a dismissal"}
    clock.advance(8 * DAY)   # the dismissal (7d) is over, the purchase (30d) is not
    assert [o.offer_id for o in moments.decide("cat").offers] == ["shoes", "socks"]
    clock.advance(23 * DAY)
    assert [o.offer_id for o in moments.decide("cat").offers] == ["bags", "shoes", "socks"]


def test_one_email_a_day_whatever_the_offer(moments, clock):
    first = moments.decide("dan", channel="email", limit=1)
    moments.outcome("dan", "impression", first.offers[0].offer_id, channel="email")
    clock.advance(HOUR)
    answer = moments.decide("dan", channel="email", explain=True)
    assert not answer.offers and answer.eligible_count == 0
    assert {r.reason.detail.split(":")[0] for r in answer.removed} == {"email-daily"}
    assert moments.decide("dan", channel="web").offers  # other channels are not capped
    clock.advance(DAY)
    assert moments.decide("dan", channel="email").offers


def test_contacts_merge_with_profiles(moments, clock):
    """Two identities shown the same offer, then revealed as one customer: the cap
    counts both profiles' impressions."""
    for who in ("eve-cookie", "eve-cookie", "eve"):
        moments.outcome(who, "impression", "bags", channel="email")
        clock.advance(2 * HOUR)
    assert moments.decide("eve").offers[0].offer_id == "bags"
    moments.stub.Identify(pb.IdentifyRequest(identifiers=[ident("eve"), ident("eve-cookie")]))
    answer = moments.decide("eve", explain=True)
    assert answer.offers[0].offer_id == "shoes"
    assert [r.reason.detail.split(":")[0] for r in answer.removed] == ["offer-weekly"]


def test_outcome_events_need_an_offer_and_a_channel(moments):
    cases = [
        (dict(channel="web"), "offer_id: required"),
        (dict(offer_id="nope", channel="web"), "'nope' is not an offer of catalog"),
        (dict(offer_id="bags"), "channel: required"),
    ]
    for fields, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            moments.track("fay", "click", **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        moments.stub.GetProfile(pb.GetProfileRequest(customer=ident("fay")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was written


# --------------------------------------------------------------------- pace
def _local(ms: int, zone=PARIS) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(zone)


def test_web_is_answered_now(moments, clock):
    answer = moments.decide("gus", channel="web")
    assert answer.deliver_at_ms == answer.decided_at_ms == int(clock.now * 1000)
    assert answer.timing == "now"


def test_quiet_hours_move_an_email_to_the_morning(moments, clock):
    clock.set(datetime(2026, 3, 4, 22, 30, tzinfo=PARIS))  # a Wednesday night in Paris
    answer = moments.decide("hal", channel="email")
    assert answer.offers
    at = _local(answer.deliver_at_ms)
    assert (at.date().isoformat(), at.hour, at.minute) == ("2026-03-05", 8, 0)
    assert "outside the send window 08:00-21:00" in answer.timing
    assert "moved to 2026-03-05 08:00" in answer.timing
    # lunch quiet hours: 12:05 waits for 13:00; 10:00 goes at 10:10 (min_delay)
    clock.set(datetime(2026, 3, 5, 11, 58, tzinfo=PARIS))
    answer = moments.decide("hal", channel="email")
    assert (_local(answer.deliver_at_ms).hour, _local(answer.deliver_at_ms).minute) == (13, 0)
    assert "in the quiet hours 12:00-13:00" in answer.timing
    clock.set(datetime(2026, 3, 5, 10, 0, tzinfo=PARIS))
    answer = moments.decide("hal", channel="email")
    assert answer.deliver_at_ms == answer.decided_at_ms + 10 * 60 * 1000
    assert "at least 10m after the decision" in answer.timing


def test_quiet_hours_are_the_customers_own(moments, clock):
    """A customer in New York at 14:30 Paris time (08:30 there) waits for 08:00 in New
    York? No: 08:30 is inside the window: sent after the minimum delay. At 03:00 New
    York time it waits for 08:00 New York time."""
    moments.stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("ivy")], attributes={"timezone": text("America/New_York")}))
    ny = ZoneInfo("America/New_York")
    clock.set(datetime(2026, 3, 5, 3, 0, tzinfo=ny))
    answer = moments.decide("ivy", channel="email")
    at = _local(answer.deliver_at_ms, ny)
    assert (at.day, at.hour, at.minute) == (5, 8, 0)
    assert "America/New_York" in answer.timing


# --------------------------------------------------------------------- delayed actions
def test_cart_reminder_fires_once_with_the_offer_of_that_moment(moments, clock):
    moments.track("jo", "add_to_cart", event_id="cart-1",
                  attributes={"sku": text("B-1")})
    clock.advance(29 * 60)
    assert moments.triggers("action", wait=0.5) == []         # not yet due
    # meanwhile bags reach their weekly cap: the reminder must not offer them
    for _ in range(3):
        moments.outcome("jo", "impression", "bags", channel="sms")
    clock.advance(2 * 60)                                     # now due (30 min)
    [action] = moments.triggers("action", wait=5, expect=1)
    assert action.name == "cart_reminder"
    assert action.event_id == "cart-1"
    assert [(i.kind, i.value) for i in action.identifiers] == [("customer_id", "jo")]
    assert action.channel == "email"
    assert [o.offer_id for o in action.decision.offers] == ["shoes"]
    assert action.decision.offers[0].name == "Shoes -10%"
    assert action.decision.decision_id
    assert action.decision.eligible_count == 2  # shoes and socks: bags are capped
    assert action.decision.catalog_version.startswith("moments@")
    assert action.decision.deliver_at_ms >= action.at_ms + 10 * 60 * 1000  # e-mail pace
    clock.advance(2 * HOUR)
    time.sleep(0.3)                                           # a few scheduler passes
    assert len(moments.triggers("action", wait=0.3)) == 1     # fired once


def test_a_purchase_cancels_the_reminder(moments, clock):
    moments.track("kim", "add_to_cart", attributes={"sku": text("B-1")})
    clock.advance(10 * 60)
    moments.track("kim", "purchase", attributes={"amount": pb.Value(number_value=80)})
    clock.advance(HOUR)
    moments.track("lea", "add_to_cart", attributes={"sku": text("B-2")})  # not cancelled
    clock.advance(HOUR)
    [action] = moments.triggers("action", wait=5, expect=1)
    assert [i.value for i in action.identifiers] == ["lea"]
    time.sleep(0.3)
    assert len(moments.triggers("action", wait=0.3)) == 1


def test_another_add_to_cart_moves_the_reminder(moments, clock):
    moments.track("max", "add_to_cart", attributes={"sku": text("B-1")})
    clock.advance(20 * 60)
    moments.track("max", "add_to_cart", attributes={"sku": text("B-2")})
    clock.advance(20 * 60)   # 40 min after the first, 20 after the last: not due
    assert moments.triggers("action", wait=0.5) == []
    clock.advance(11 * 60)
    assert len(moments.triggers("action", wait=5, expect=1)) == 1


def test_scheduled_actions_survive_a_restart(tmp_path, clock):
    first = Moments(tmp_path, clock)
    first.track("ned", "add_to_cart", attributes={"sku": text("B-1")})
    first.close()
    clock.advance(HOUR)  # due while no server was running
    second = Moments(tmp_path, clock)
    try:
        [action] = second.triggers("action", wait=5, expect=1)
        assert [i.value for i in action.identifiers] == ["ned"]
        assert action.decision.offers
    finally:
        second.close()


def test_erasure_cancels_pending_actions(moments, clock):
    moments.track("oli", "add_to_cart", attributes={"sku": text("B-1")})
    moments.stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=ident("oli")))
    clock.advance(HOUR)
    assert moments.triggers("action", wait=0.5) == []
    assert moments.running.engine.store.next_due_ms() is None


# --------------------------------------------------------------------- bad catalogs
@pytest.mark.parametrize(("snippet", "message"), [
    ('[pace.email]\ndeliver = "later"\nsend_window = ["09:00", "17:00"]\n'
     'quiet_hours = ["08:00", "18:00"]\n', "cover the whole send window"),
    ('[pace.email]\ndeliver = "later"\nsend_window = ["25:00", "17:00"]\n',
     "pace.email.send_window: a time of day"),
    ('[pace.email]\ndeliver = "later"\nsend_window = ["09:00", "09:00"]\n',
     "from and until are the same time"),
    ('[pace.fax]\ndeliver = "later"\n', "pace.fax: unknown channel 'fax'"),
    ('[pace.web]\nmin_delay = "10m"\n', "only applies to a channel delivered later"),
    ('[pace.email]\ndeliver = "later"\ntimezone = "Mars/Olympus"\n', "unknown time zone"),
    ('[pace.email]\ndeliver = "later"\nmin_delay = "ten minutes"\n', "a duration like"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 0\nper = "1d"\n', "a cap of 0 would remove"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 2\n', "policy 'p'.per: required"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 1000\nper = "1d"\n', "max: at most 256"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 2\nper = "0d"\n', "longer than zero"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 1\nper = "1d"\nchannels = ["fax"]\n',
     "unknown channel 'fax'"),
    ('[[policy]]\nname = "p"\ntype = "suppress"\nafter = "purchase"\nfor = "1d"\n',
     "counts impression, click, conversion, dismissal"),
    ('[[policy]]\nname = "p"\ntype = "cooldown"\nfor = "1h"\nmax = 2\n',
     "unknown key 'max' for a cooldown"),
    ('[[policy]]\nname = "p"\ntype = "cap"\nmax = 1\nper = "1d"\noffers = ["hats"]\n',
     "unknown offer 'hats'"),
    ('[[policy]]\nname = "cooldown"\ntype = "cooldown"\nfor = "2h"\n', "defined twice"),
    ('[triggers.again]\nevent = "purchase"\ndelay = "1h"\ncancel_on = ["purchase"]\n',
     "it would cancel itself"),
    ('[triggers.soon]\nevent = "purchase"\ncancel_on = ["add_to_cart"]\n',
     "cancel_on and decide need a delay"),
    ('[triggers.fax]\nevent = "purchase"\ndelay = "1h"\ndecide = { channel = "fax" }\n',
     "decide.channel: unknown channel 'fax'"),
])
def test_catalog_refuses_what_cannot_work(tmp_path, snippet, message):
    """Loaded through ReloadCatalog on a running server: INVALID_ARGUMENT naming the
    place, and the previous catalog keeps serving."""
    clock = FakeClock(MONDAY)
    m = Moments(tmp_path, clock)
    try:
        path = m.settings.catalog_path
        # tables must come before the [[offer]] arrays' sub-tables: insert ahead
        original = path.read_text()
        if snippet.startswith("[pace.email]"):  # replaces the catalog's own
            original = re.sub(r"\[pace\.email\]\n(?:[a-z_]+ = .*\n)+", "", original)
        path.write_text(original.replace("[[offer]]", snippet + "\n[[offer]]", 1))
        with pytest.raises(grpc.RpcError) as err:
            m.stub.ReloadCatalog(pb.ReloadCatalogRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
        assert m.decide("zed").catalog_version.startswith("moments@")
    finally:
        m.close()


def test_two_server_processes_fire_each_action_once(tmp_path):
    """Real clocks, two ``decision serve`` processes on one store, both running their
    scheduler: each due action is taken in one write transaction, so it fires once."""
    from tests.conftest import two_servers

    catalog = tmp_path / "moments.toml"
    catalog.write_text((DATA / "moments.toml").read_text().replace('delay = "30m"',
                                                                   'delay = "1s"'))
    with two_servers(tmp_path / "store", catalog) as (one, other):
        for n in range(20):
            (one if n % 2 else other).Track(pb.Event(
                type="add_to_cart", customer=ident(f"twin-{n}"),
                attributes={"sku": text("B")}), timeout=5)
        assert len(logged(one, "action", wait=15, expect=20)) >= 20
        time.sleep(1.5)  # more scheduler passes in both processes
        actions = logged(other, "action", wait=0.3)
        who = sorted(t.identifiers[0].value for t in actions)
        assert who == sorted(f"twin-{n}" for n in range(20))  # each once, none lost
        assert all(t.decision.offers for t in actions)


def test_a_suppression_outlives_a_flood_of_impressions(moments, clock):
    """The history keeps at most 512 contacts: impressions go first, a conversion
    stays as long as a policy counts it."""
    moments.outcome("pia", "conversion", "bags", channel="email")
    clock.advance(HOUR)
    events = [pb.Event(type="impression", customer=ident("pia"), offer_id="socks",
                       channel="sms", event_id=f"imp-{n}") for n in range(700)]
    summary = moments.stub.TrackStream(iter([pb.EventBatch(events=events)]), timeout=30)
    assert summary.applied == 700
    answer = moments.decide("pia", channel="web", explain=True)
    assert {r.offer_id: r.reason.detail.split(":")[0] for r in answer.removed} == {
        "bags": "after-purchase", "socks": "offer-weekly"}


def test_a_zone_that_is_not_a_zone_falls_back_and_holds_back_nobody(moments, clock):
    """"Europe" names a directory of the zone database: the channel's zone is used,
    Decide says so, and delayed actions of everyone still fire."""
    moments.stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("quin")], attributes={"timezone": text("Europe")}))
    clock.set(datetime(2026, 3, 4, 22, 30, tzinfo=PARIS))  # outside the window
    answer = moments.decide("quin", channel="email")
    assert "(Europe/Paris, the profile's zone 'Europe' is unknown)" in answer.timing
    assert _local(answer.deliver_at_ms).hour == 8
    for who in ("quin", "rae"):
        moments.track(who, "add_to_cart", attributes={"sku": text("B")})
    clock.advance(HOUR)
    actions = moments.triggers("action", wait=5, expect=2)
    assert sorted(a.identifiers[0].value for a in actions) == ["quin", "rae"]


@pytest.mark.parametrize(("zone", "decided", "quiet", "window", "want"), [
    # New York falls back at 02:00 EDT -> 01:00 EST: 01:10 EST is the second 01:10
    ("America/New_York", datetime(2024, 11, 3, 6, 10, tzinfo=timezone.utc),
     ["01:00", "01:30"], None, datetime(2024, 11, 3, 6, 30, tzinfo=timezone.utc)),
    # spring forward: 02:30 does not exist on 10 March, so the next day's 02:30
    ("America/New_York", datetime(2024, 3, 10, 6, 0, tzinfo=timezone.utc),
     None, ["02:30", "02:45"], datetime(2024, 3, 11, 6, 30, tzinfo=timezone.utc)),
    # Paris: 01:50 CET, window from 03:00: 03:00 CEST is one hour of wall clock later
    ("Europe/Paris", datetime(2026, 3, 29, 0, 50, tzinfo=timezone.utc),
     None, ["03:00", "22:00"], datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc)),
])
def test_pace_across_daylight_saving_changes(zone, decided, quiet, window, want):
    from decision.config.pace import ChannelPace

    spec = {"deliver": "later", "timezone": zone}
    if quiet:
        spec["quiet_hours"] = quiet
    if window:
        spec["send_window"] = window
    decided_ms = int(decided.timestamp() * 1000)
    timing = ChannelPace("email", spec).deliver_at(decided_ms)
    assert timing.deliver_at_ms >= decided_ms
    assert timing.deliver_at_ms == int(want.timestamp() * 1000), timing
