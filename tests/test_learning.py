"""The learning loop through gRPC: decision records, outcomes joined to them, the
learner, models served and inspected, exploration with logged probabilities,
experiments and the control group (issue 15). Real servers, real LMDB."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from decision.config.catalog import load_catalog
from decision.config.learning import unit_hash
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import DATA, ServerProcess, free_port, ident, num

LEARNING_CATALOG = DATA / "learning.toml"


@pytest.fixture
def catalog_file(tmp_path) -> Path:
    path = tmp_path / "catalog.toml"
    shutil.copy(LEARNING_CATALOG, path)
    return path


def upsert(stub, customer: str, f=(1.0, 0.5, 0.0, 0.0), tier: float = 1.0) -> None:
    stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident(customer)], attributes={"tier": num(tier)},
        features=dict(zip(("f1", "f2", "f3", "f4"), f))))


def outcome(stub, customer: str, kind: str, reply, offer_id: str, channel: str = "web",
            **attributes):
    return stub.Track(pb.Event(
        event_id=uuid.uuid4().hex, type=kind, customer=ident(customer), channel=channel,
        offer_id=offer_id, decision_id=reply.decision_id,
        attributes={k: num(v) for k, v in attributes.items()}))


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def records(stub, **request) -> list:
    return list(stub.GetDecisionRecords(pb.DecisionRecordsRequest(**request)))


def customer_in(arm: str, prefix: str = "c") -> str:
    """A customer id whose profile-less hash lands in ``arm`` of the test catalog (the
    control group is checked first). Used only for customers without a profile."""
    for n in range(10_000):
        unit = f"customer_id\x1f{prefix}{n}"
        if unit_hash("control-test", unit) < 0.1:
            got = "control"
        else:
            u = unit_hash("nba-test", unit)
            got = "learning" if u < 0.6 else "static" if u < 0.8 else "random"
        if got == arm:
            return f"{prefix}{n}"
    raise AssertionError(arm)


# ------------------------------------------------------------------ decisions
def test_decide_reports_arm_policy_and_probabilities(stub):
    learning_customer = customer_in("learning")
    reply = stub.Decide(pb.DecideRequest(customer=ident(learning_customer), channel="web",
                                         limit=3))
    assert (reply.experiment, reply.arm, reply.policy) == ("nba", "learning", "epsilon")
    assert reply.model_version != ""
    assert len(reply.offers) == 3
    # epsilon 0.2 over 5 eligible offers (o6 needs tier 2): the first slot's offer has
    # probability 0.8 + 0.2/5 if it is the greedy one, else 0.2/5
    assert min(abs(reply.offers[0].probability - p) for p in (0.84, 0.04)) < 1e-9
    assert all(0.0 < o.probability <= 1.0 for o in reply.offers)
    static = stub.Decide(pb.DecideRequest(customer=ident(customer_in("static")),
                                          channel="web", limit=2))
    assert (static.arm, static.policy, static.model_version) == ("static", "greedy", "")
    assert [o.probability for o in static.offers] == [1.0, 1.0]
    rand = stub.Decide(pb.DecideRequest(customer=ident(customer_in("random")), channel="web",
                                        limit=2))
    assert rand.policy == "random"
    assert [o.probability for o in rand.offers] == pytest.approx([1 / 5, 1 / 4])
    control = stub.Decide(pb.DecideRequest(customer=ident(customer_in("control")),
                                           channel="web"))
    assert (control.arm, control.policy) == ("control", "random")
    # a channel outside the experiment keeps its own exploration; contact center greedy
    agent = stub.Decide(pb.DecideRequest(customer=ident(customer_in("learning")),
                                         channel="contact_center", limit=2))
    assert (agent.experiment, agent.policy) == ("", "greedy")
    assert [o.probability for o in agent.offers] == [1.0, 1.0]


def test_the_arm_is_stable_and_the_shares_hold(stub):
    upsert(stub, "stable-1")
    arms = {stub.Decide(pb.DecideRequest(customer=ident("stable-1"), channel="web")).arm
            for _ in range(20)}
    assert len(arms) == 1
    # the shares over many customers (hash of the identifier before a profile exists)
    counts = {}
    for n in range(2000):
        unit = f"customer_id\x1fshare-{n}"
        if unit_hash("control-test", unit) < 0.1:
            arm = "control"
        else:
            u = unit_hash("nba-test", unit)
            arm = "learning" if u < 0.6 else "static" if u < 0.8 else "random"
        counts[arm] = counts.get(arm, 0) + 1
    assert abs(counts["control"] / 2000 - 0.1) < 0.025
    assert abs(counts["learning"] / 2000 - 0.54) < 0.04


def test_records_by_id_and_time(stub):
    upsert(stub, "rec-1", f=(2.0, 1.0, 0.5, 0.0))
    before = int(time.time() * 1000)
    reply = stub.Decide(pb.DecideRequest(customer=ident("rec-1"), channel="web", limit=2))
    [record] = wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
    assert record.channel == "web" and record.arm == reply.arm
    assert list(record.features) == [2.0, 1.0, 0.5, 0.0]
    assert list(record.feature_names) == ["f1", "f2", "f3", "f4"]
    assert [o.offer_id for o in record.offers] == [o.offer_id for o in reply.offers]
    assert [o.probability for o in record.offers] == [o.probability for o in reply.offers]
    assert record.profile_key == stub.GetProfile(
        pb.GetProfileRequest(customer=ident("rec-1"))).profile_key
    if reply.arm not in ("control",):
        assert record.shadow_arm == "shadow-static" and len(record.shadow_offers) == 2
    window = records(stub, from_ms=before, to_ms=int(time.time() * 1000) + 1)
    assert reply.decision_id in [r.decision_id for r in window]
    with pytest.raises(grpc.RpcError) as e:
        records(stub, decision_id="0" * 28)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        records(stub, from_ms=10, to_ms=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "to_ms" in e.value.details()


def _records_or_none(stub, **request):
    try:
        return records(stub, **request)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


# ------------------------------------------------------------------ outcomes -> models
def model(stub, offer_id: str = "", channel: str = "") -> pb.ModelInfo:
    return stub.GetModel(pb.GetModelRequest(offer_id=offer_id, channel=channel))


def test_outcomes_become_examples_once(stub):
    customer = customer_in("static", "out")  # greedy: the same offers each time
    upsert(stub, customer)
    reply = stub.Decide(pb.DecideRequest(customer=ident(customer), channel="web", limit=2))
    first, second = reply.offers[0].offer_id, reply.offers[1].offer_id
    wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
    outcome(stub, customer, "impression", reply, first)
    outcome(stub, customer, "impression", reply, second)
    outcome(stub, customer, "click", reply, first)
    info = wait_for(lambda: (m := model(stub, first, "web")).offers[0].impressions and m)
    o = info.offers[0]
    assert (o.impressions, o.positives, o.channel, o.prior_only) == (1, 1, "web", False)
    # a second click and a second impression teach nothing: counted as duplicates
    outcome(stub, customer, "click", reply, first)
    outcome(stub, customer, "impression", reply, first)
    wait_for(lambda: model(stub).duplicates >= 2)
    # the second offer had no click: negative once its 1 s window closes
    o2 = wait_for(lambda: (m := model(stub, second, "web")).offers[0].impressions and m)
    assert (o2.offers[0].impressions, o2.offers[0].positives) == (1, 0)
    assert model(stub, first, "web").offers[0].impressions == 1
    # a click after the window closed is late
    time.sleep(1.1)
    outcome(stub, customer, "click", reply, second)
    wait_for(lambda: model(stub).late >= 1)
    info = model(stub)
    assert info.examples == 2 and info.outcomes >= 5


def test_bad_outcomes_are_refused(stub):
    customer = "bad-out"
    upsert(stub, customer)
    reply = stub.Decide(pb.DecideRequest(customer=ident(customer), channel="contact_center",
                                         limit=2))
    shown = {o.offer_id for o in reply.offers}
    missing = sorted({"o1", "o2", "o3", "o4", "o5"} - shown)[0]
    wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
    with pytest.raises(grpc.RpcError) as e:
        outcome(stub, customer, "impression", reply, missing, channel="contact_center")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "was not in decision" in e.value.details()
    # contact_center learns from clicks only: a conversion naming a decision is refused
    with pytest.raises(grpc.RpcError) as e:
        outcome(stub, customer, "conversion", reply, reply.offers[0].offer_id,
                channel="contact_center", amount=10.0)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not learn from conversion" in e.value.details()
    # an old decision id nobody recorded
    old = f"{int(time.time() * 1000) - 60_000:012x}{'ab' * 8}"
    with pytest.raises(grpc.RpcError) as e:
        stub.Track(pb.Event(type="click", customer=ident(customer), channel="web",
                            offer_id="o1", decision_id=old))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "decision_id" in e.value.details()
    assert model(stub).examples == 0


def test_learning_moves_the_served_propensity(stub):
    customer = customer_in("static", "lift")
    upsert(stub, customer, f=(1.0, 1.0, 1.0, 1.0))
    agent = pb.DecideRequest(customer=ident(customer), channel="contact_center", limit=5)
    before = {o.offer_id: o.propensity for o in stub.Decide(agent).offers}
    version = stub.Decide(agent).model_version
    for _ in range(15):  # o4 is clicked every time it is shown, by this customer
        reply = stub.Decide(agent)
        wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
        outcome(stub, customer, "impression", reply, "o4", channel="contact_center")
        outcome(stub, customer, "click", reply, "o4", channel="contact_center")
    wait_for(lambda: model(stub, "o4", "contact_center").offers[0].impressions == 15)
    after = wait_for(lambda: (r := stub.Decide(agent)).model_version != version and r)
    after = {o.offer_id: o.propensity for o in after.offers}
    assert after["o4"] > before["o4"] + 0.2
    assert after["o4"] == max(after.values())
    info = model(stub, "o4", "contact_center").offers[0]
    assert info.propensity_low < info.propensity < info.propensity_high
    assert info.top_features and not info.prior_only
    # web has models of its own: o4's web model learned nothing
    assert model(stub, "o4", "web").offers[0].prior_only


def test_forget_erases_decision_records(stub):
    upsert(stub, "gone-1")
    reply = stub.Decide(pb.DecideRequest(customer=ident("gone-1"), channel="web"))
    cold = stub.Decide(pb.DecideRequest(customer=ident("gone-2"), channel="web"))
    wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
    wait_for(lambda: _records_or_none(stub, decision_id=cold.decision_id))
    upsert(stub, "gone-2")  # the cold decision's identifier now has a profile
    stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=ident("gone-1")))
    stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=ident("gone-2")))
    for d in (reply, cold):
        with pytest.raises(grpc.RpcError) as e:
            records(stub, decision_id=d.decision_id)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:  # and an outcome for it is refused
            outcome(stub, "gone-1", "click", d, d.offers[0].offer_id)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_model_errors(stub):
    with pytest.raises(grpc.RpcError) as e:
        model(stub, "nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        model(stub, channel="fax")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = model(stub)
    assert {o.channel for o in info.offers} == {"", "web"}
    assert all(o.prior_only for o in info.offers)


# ------------------------------------------------------------------ processes
def _serve(data: Path, catalog: Path) -> ServerProcess:
    server = ServerProcess(data, catalog, free_port())
    server.wait_ready()
    return server


@pytest.mark.needs_jit("server processes compile the kernels; plain Python is too slow")
def test_models_survive_restart_and_a_killed_learner(tmp_path, catalog_file):
    """Two processes share a store; one holds the learner lease. Outcomes stream in, the
    lease holder is killed (-9) midway, the other takes over: every labelled impression
    is learned exactly once. A restart serves the same models."""
    data = tmp_path / "store"
    a, b = _serve(data, catalog_file), _serve(data, catalog_file)
    try:
        stubs = [pb_grpc.DecisionServiceStub(grpc.insecure_channel(s.address)) for s in (a, b)]
        upsert(stubs[0], "kill-1")
        shown = 0
        for n in range(40):
            stub = stubs[1] if n >= 20 else stubs[n % 2]
            reply = stub.Decide(pb.DecideRequest(customer=ident("kill-1"),
                                                 channel="contact_center", limit=1))
            wait_for(lambda: _records_or_none(stub, decision_id=reply.decision_id))
            offer = reply.offers[0].offer_id
            outcome(stub, "kill-1", "impression", reply, offer, channel="contact_center")
            outcome(stub, "kill-1", "click", reply, offer, channel="contact_center")
            shown += 1
            if n == 19:  # kill the learner: the lease holder, mid-stream
                holder = wait_for(lambda: next((s for s in (a, b) if "holds the learner "
                                                "lease" in s.log.read_text()), None))
                holder.proc.send_signal(signal.SIGKILL)
                holder.proc.wait()
                if holder is b:  # keep sending to the survivor
                    a, b = b, a
                    stubs.reverse()
        info = wait_for(lambda: (m := model(stubs[1])).examples == shown and m, timeout=20)
        assert sum(o.impressions for o in info.offers) == shown
        assert info.duplicates == 0
        version = info.model_version
    finally:
        a.stop()
        b.stop()
    c = _serve(data, catalog_file)
    try:
        stub = pb_grpc.DecisionServiceStub(grpc.insecure_channel(c.address))
        info = model(stub)
        assert (info.model_version, info.examples) == (version, shown)
        assert stub.Decide(pb.DecideRequest(customer=ident("kill-1"),
                                            channel="contact_center")).model_version == version
    finally:
        c.stop()


def test_a_changed_offer_feature_list_starts_afresh(tmp_path, catalog_file, caplog):
    from decision.core.engine import Engine
    from decision.core.ingest import Event
    from decision.core.profiles import ProfileUpdate
    from decision.core.requests import Identifier
    from decision.core.respond import DecideQuery
    from decision.settings import Settings

    settings = Settings(data_dir=tmp_path / "store", catalog_path=catalog_file)
    engine = Engine(settings)
    try:
        who = Identifier("customer_id", "afresh")
        engine.upsert_profile(ProfileUpdate((who,), {}, {"f1": 1.0}))
        d = engine.decide(DecideQuery(who, "contact_center", limit=1))
        engine.recorder.flush()
        offer = d.offers[0].offer.id
        engine.track(Event("impression", who, "i1", 0, "contact_center", {}, offer,
                           d.decision_id))
        engine.track(Event("click", who, "c1", 0, "contact_center", {}, offer, d.decision_id))
        assert engine.learning_step() == 1
        assert engine.model_insight(offer, "contact_center").offers[0].impressions == 1
        text = catalog_file.read_text().replace('offer_features = ["d1", "d2"]',
                                                'offer_features = ["d1", "d2", "d3"]')
        text = text.replace("interactions = { f2 = [0.3, -0.3] }",
                            "interactions = { f2 = [0.3, -0.3, 0.0] }")
        catalog_file.write_text(text)
        engine.reload_catalog()
        with caplog.at_level("WARNING", logger="decision.core.learning"):
            engine.learning_step()
        assert "start afresh" in caplog.text
        assert engine.model_insight(offer, "contact_center").offers[0].impressions == 0
    finally:
        engine.close()


# ------------------------------------------------------------------ catalog errors
@pytest.mark.parametrize("edit, message", [
    (('share = 0.6, model = "learning"', 'share = 0.5, model = "learning"'),
     "shares add up to 0.9"),
    (('epsilon = 0.2', 'epsilon = 1.5'), "explore.web.epsilon: a rate between 0 and 1"),
    (('click = "1s", conversion', 'click = "0s", conversion'),
     "learning.windows.default.click: must be longer than zero"),
    (('click = "1s", conversion', 'click = "120d", conversion'), "at most 90d"),
    (('per_channel = ["web"]', 'per_channel = ["fax"]'), "learning.per_channel: unknown"),
    (('policy = "thompson"', 'policy = "ucb"'), "explore.app.policy: one of"),
    (('share = 0.1\nsalt', 'share = 0.9\nsalt'), "control.share"),
    (('channels = ["web"]\nshadow', 'channels = ["web", "app"]\nshadow'), None),
])
def test_learning_catalog_errors(tmp_path, edit, message):
    text = LEARNING_CATALOG.read_text()
    assert edit[0] in text, edit[0]
    path = tmp_path / "catalog.toml"
    path.write_text(text.replace(edit[0], edit[1]))
    if message is None:
        load_catalog(path)  # an experiment may cover several channels
        return
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert message in str(e.value)


def test_two_experiments_on_one_channel_are_refused(tmp_path):
    text = LEARNING_CATALOG.read_text() + """
[experiments.other]
channels = ["web"]
arms = [{ name = "a", share = 1.0, model = "static" }]
"""
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match="already in experiment 'nba'"):
        load_catalog(path)


def test_models_cli(running, stub):
    reply = subprocess.run(
        [sys.executable, "-m", "decision.cli", "models", "--address",
         f"127.0.0.1:{running.port}", "--channel", "web"],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert reply.returncode == 0, reply.stderr
    assert "o1" in reply.stdout and "prior only" in reply.stdout
    assert "examples learned" in reply.stdout


def test_records_expire_after_the_retention(tmp_path, catalog_file):
    from decision.core.engine import Engine
    from decision.core.requests import Identifier
    from decision.core.respond import DecideQuery
    from decision.errors import NotFound
    from decision.settings import Settings

    catalog_file.write_text(catalog_file.read_text().replace('retention = "30d"',
                                                             'retention = "1m"'))
    now = [1_800_000_000.0]
    engine = Engine(Settings(data_dir=tmp_path / "store", catalog_path=catalog_file),
                    clock=lambda: now[0])
    try:
        d = engine.decide(DecideQuery(Identifier("customer_id", "old"), "web"))
        engine.recorder.flush()
        assert engine.decision_records(d.decision_id)[0].decision_id == d.decision_id
        now[0] += 59
        engine.learner.last_cleanup = 0.0
        engine.learning_step()
        assert engine.decision_records(d.decision_id)  # still within the minute
        now[0] += 2
        engine.learner.last_cleanup = 0.0
        engine.learning_step()
        with pytest.raises(NotFound):
            engine.decision_records(d.decision_id)
    finally:
        engine.close()
