"""What an answer says without being asked, through gRPC against a real server:

- an empty Decide / DecideBatch answer says when contact policies emptied it
  (``policy_removed_count``), without ``explain``;
- a WatchTriggers stream says when it is live: its initial metadata
  (``decision-cursor``) arrives once its starting cursor is fixed, and every trigger
  from that cursor on reaches it."""

from __future__ import annotations

import time

import pytest

from decision.cli import render
from decision.core.engine import DecideQuery, Identifier
from decision.edge.wire import OfferEncodings, decision_message, encode_decision
from decision.v1 import decision_pb2 as pb
from kernels.decide import decide_offers
from tests.conftest import DATA, TEST_CATALOG, flag, ident, text, two_servers
from tests.test_moments import HOUR, MONDAY, FakeClock, Moments

CURSOR = "decision-cursor"


# ------------------------------------------------------- why an answer is empty
def _catalog(tmp_path):
    """tests/data/moments.toml (5 contact policies; bags, shoes, socks on every
    channel, no rule), plus a channel "push" and an offer "vip" with a rule
    (``profile.vip``) on e-mail and push."""
    source = (DATA / "moments.toml").read_text()
    channels = 'channels = ["web", "app", "email", "sms"]\n'
    assert source.startswith("#") and channels in source
    source = source.replace(channels, 'channels = ["web", "app", "email", "sms", "push"]\n', 1)
    source = source.replace('timezone = "string"\n', 'timezone = "string"\nvip = "bool"\n', 1)
    source += ('\n[[offer]]\nid = "vip"\nname = "VIP lounge"\nchannels = ["email", "push"]\n'
               'value = 50.0\nrule = "profile.vip"\n')
    (tmp_path / "moments.toml").write_text(source)


@pytest.fixture
def capped(tmp_path):
    """A server on that catalog whose customers are, on e-mail and push:

    dan (not vip): shown an e-mail an hour ago: email-daily caps every e-mail offer;
        3 of them passed their rule (vip did not): e-mail empty, 3 removed;
    vic (vip): the same: all 4 passed: e-mail empty, 4 removed;
    una (vip): bought vip (after-purchase, 30 days): push empty, 1 removed;
    zoe (not vip): bought vip too: push empty, but its rule fails: 0 removed;
    bob: shown bags on the web a minute ago (cooldown): web answers shoes, socks."""
    _catalog(tmp_path)
    clock = FakeClock(MONDAY)
    m = Moments(tmp_path, clock)
    for who, vip in (("dan", False), ("vic", True), ("una", True), ("zoe", False)):
        m.stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident(who)],
                                                     attributes={"vip": flag(vip)}))
    for who in ("dan", "vic"):
        m.outcome(who, "impression", "bags", channel="email")
    for who in ("una", "zoe"):
        m.outcome(who, "conversion", "vip", channel="push")
    clock.advance(HOUR - 60)
    m.outcome("bob", "impression", "bags")
    clock.advance(60)
    yield m
    m.close()


EMPTIED = [("dan", "email", 3), ("vic", "email", 4), ("una", "push", 1)]
# empty for another reason: a failed rule (zoe's purchase blocks vip all the same),
# a customer with no profile (no rule holds, no contact)
EMPTY = [("zoe", "push"), ("nobody", "push")]
FULL = [("bob", "web", ["shoes", "socks"]), ("dan", "web", ["bags", "shoes", "socks"]),
        ("vic", "push", ["vip"])]


def test_an_answer_emptied_by_contact_policies_says_so_without_explain(capped):
    for who, channel, n in EMPTIED:
        answer = capped.decide(who, channel)
        assert (list(answer.offers), answer.eligible_count, answer.policy_removed_count,
                list(answer.removed)) == ([], 0, n, []), (who, channel)
        explained = capped.decide(who, channel, explain=True)
        assert explained.policy_removed_count == n == len(explained.removed)
        assert not explained.offers and explained.eligible_count == 0


def test_an_answer_empty_for_another_reason_counts_nothing(capped):
    for who, channel in EMPTY:
        answer = capped.decide(who, channel)
        assert (list(answer.offers), answer.eligible_count) == ([], 0), who
        assert answer.policy_removed_count == 0, who
        explained = capped.decide(who, channel, explain=True)
        assert (explained.policy_removed_count, list(explained.removed)) == (0, []), who
    # and an answer with offers: 0, even when a policy removed some of them (bob)
    for who, channel, offers in FULL:
        answer = capped.decide(who, channel)
        assert [o.offer_id for o in answer.offers] == offers, who
        assert answer.policy_removed_count == 0, who
    assert [r.offer_id for r in capped.decide("bob", "web", explain=True).removed] == ["bags"]


@pytest.mark.needs_jit("asserts on decide_offers.signatures, which plain functions lack")
def test_decide_batch_says_it_for_each_empty_answer(capped):
    """Rows emptied by policies among others (rows with contacts before them, so a
    row reads its own history), equal to what Decide answers one by one; and the rare
    path compiles nothing at request time (the kernel's signature of Decide)."""
    rows = ([(who, channel) for who, channel, _ in FULL[:1]]
            + [(who, channel) for who, channel, _ in EMPTIED]
            + EMPTY + [(who, channel) for who, channel, _ in FULL[1:]])
    singles = [capped.decide(who, channel) for who, channel in rows]
    compiled = set(decide_offers.signatures)

    def batch(explain_row=None):
        reply = capped.stub.DecideBatch(pb.DecideBatchRequest(requests=[
            pb.DecideRequest(customer=ident(who), channel=channel, explain=n == explain_row)
            for n, (who, channel) in enumerate(rows)]), timeout=10)
        return reply.responses

    expected = {(who, channel): n for who, channel, n in EMPTIED}
    for explain_row in (None, 0):  # decide_each, then one by one (explain)
        answers = batch(explain_row)
        assert len(answers) == len(rows)
        for (who, channel), single, got in zip(rows, singles, answers):
            assert got.policy_removed_count == expected.get((who, channel), 0), (who, channel)
            assert ([o.offer_id for o in got.offers], got.eligible_count,
                    got.policy_removed_count) == ([o.offer_id for o in single.offers],
                                                  single.eligible_count,
                                                  single.policy_removed_count), (who, channel)
    assert set(decide_offers.signatures) == compiled


def test_the_wire_bytes_carry_the_count(capped):
    """encode_decision (the server's bytes) parses to decision_message (the classes)
    with the count, for Decide and DecideBatch decisions, with and without explain."""
    engine = capped.running.servicer.engine
    encodings = OfferEncodings(engine.catalog)
    queries = [DecideQuery(Identifier("customer_id", who), channel, explain=explain)
               for who, channel in [(w, c) for w, c, _ in EMPTIED + FULL] + EMPTY
               for explain in (False, True)]
    decisions = ([engine.decide(q) for q in queries]
                 + engine.decide_many([q for q in queries if not q.explain]))
    counts = []
    for d in decisions:
        assert pb.DecideResponse.FromString(encode_decision(d, encodings)) \
            == decision_message(d)
        counts.append(d.policy_removed_count)
    assert sorted(set(counts)) == [0, 1, 3, 4]


def test_decision_ask_says_why_there_is_no_offer(capped):
    answer = capped.decide("dan", "email")
    out = render(answer, "dan", "email", "", 1.0)
    assert "0 offers eligible, best 0 shown" in out
    assert ("no offer: all 3 offers whose rule held were removed by contact policies "
            "(ask again with --explain to see which)") in out
    assert "no offer is eligible here and now" not in out
    out = render(capped.decide("una", "push"), "una", "push", "", 1.0)
    assert "no offer: the one offer whose rule held was removed by a contact policy" in out
    explained = render(capped.decide("dan", "email", explain=True), "dan", "email", "", 1.0)
    assert "whose rule held were removed by contact policies" in explained
    assert "--explain" not in explained and "removed bags: email-daily" in explained
    out = render(capped.decide("zoe", "push"), "zoe", "push", "", 1.0)
    assert "(no offer is eligible here and now)" in out and "contact polic" not in out
    # explain lists at most the server's maximum limit: the line says how many it shows
    reason = pb.Reason(code="POLICY", detail="email-daily: ...")
    reply = pb.DecideResponse(policy_removed_count=112, removed=[
        pb.RemovedOffer(offer_id=f"o{i}", reason=reason) for i in range(100)])
    assert ("no offer: all 112 offers whose rule held were removed by contact policies "
            "(the first 100 listed below)") in render(reply, "C0000042", "email", "", 1.0)


# ------------------------------------------------------- when a stream is live
def _cart(who: str) -> pb.Event:
    return pb.Event(type="add_to_cart", customer=ident(who), attributes={"sku": text("S")})


def _live_cursor(call) -> int:
    """The stream's first cursor, from its initial metadata (waits for it)."""
    metadata = dict(call.initial_metadata())
    assert CURSOR in metadata, f"no {CURSOR} in the initial metadata: {metadata}"
    return int(metadata[CURSOR])


def _watchers_gone(running, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while running.servicer._watchers:
        assert time.monotonic() < deadline, "a cancelled subscriber kept its slot"
        time.sleep(0.002)


def test_from_end_is_live_once_its_initial_metadata_arrives(stub, running):
    """The race of the issue: subscribe from the end, and act as soon as the stream is
    live. Every time, the trigger the action fires is delivered, and it is the first
    one, at the cursor the metadata announced."""
    for i in range(20):
        call = stub.WatchTriggers(pb.WatchTriggersRequest(from_end=True), timeout=10)
        try:
            start = _live_cursor(call)
            key = stub.Track(_cart(f"live{i}"), timeout=5).profile_key
            first = next(call)
            assert (first.kind, first.name, first.profile_key) == ("event", "cart_reminder",
                                                                   key), i
            assert first.cursor == start, i
        finally:
            call.cancel()
        _watchers_gone(running)


def test_the_metadata_comes_before_any_trigger_and_names_the_first(stub, running):
    """From a cursor, the metadata is that cursor (0 and 1: the beginning), and the
    stream starts there; from the end, it is where the log ends, with the log
    already holding triggers."""
    keys = [stub.Track(_cart(f"old{i}"), timeout=5).profile_key for i in range(3)]
    for from_cursor, expect in ((0, 1), (1, 1), (2, 2)):
        call = stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=from_cursor),
                                  timeout=10)
        try:
            assert _live_cursor(call) == expect
            got = [next(call) for _ in range(4 - expect)]
            assert [t.cursor for t in got] == list(range(expect, 4))
            assert [t.profile_key for t in got] == keys[expect - 1:]
        finally:
            call.cancel()
        _watchers_gone(running)
    call = stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=1, from_end=True),
                              timeout=10)
    try:
        assert _live_cursor(call) == 4  # from_cursor ignored: after the 3 triggers
        key = stub.Track(_cart("new"), timeout=5).profile_key
        first = next(call)
        assert (first.cursor, first.profile_key) == (4, key)
    finally:
        call.cancel()


def test_live_across_processes(tmp_path):
    """Subscribed on one server process, the trigger committed by another: the
    metadata's promise holds for the shared log too."""
    with two_servers(tmp_path / "store", TEST_CATALOG) as (stub_a, stub_b):
        for i in range(5):
            call = stub_b.WatchTriggers(pb.WatchTriggersRequest(from_end=True), timeout=10)
            try:
                start = _live_cursor(call)
                key = stub_a.Track(_cart(f"far{i}"), timeout=5).profile_key
                first = next(call)
                assert (first.cursor, first.profile_key) == (start, key), i
            finally:
                call.cancel()
            time.sleep(0.05)  # the subscriber's slot frees as the server sees the cancel
