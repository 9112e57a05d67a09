"""Property-based fuzzing (hypothesis) of every RPC of a real server process, of the
raw bytes it accepts, and of the catalog loader.

Properties: every call ends with a status from an allowed set (never INTERNAL or
UNKNOWN: those mean a server bug), within its deadline; the process stays up and
logs no internal error; a sentinel customer's profile is unchanged, byte for byte;
the catalog loader raises CatalogError (or RuleError) with a message for any text,
never another exception. Example counts are bounded so the file runs in well under
a minute on two cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decision.config.catalog import load_catalog
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, ServerProcess, free_port, ident, num, text

# DECISION_FUZZ_SCALE=20 multiplies every example count (a longer hunt, outside CI)
SCALE = float(os.environ.get("DECISION_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=int(60 * SCALE), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SENTINEL = "fuzz-sentinel-\u2603"
TIMEOUT_S = 10
# what a client may get back for a request it made up (never INTERNAL, UNKNOWN,
# DATA_LOSS, UNAVAILABLE: those would be a server bug, stored damage, or a crash)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
COUNTS: dict[str, int] = {}


# ------------------------------------------------------------------ strategies
utf8 = st.characters(codec="utf-8")  # any code point a protobuf string can carry
names = st.one_of(st.text(utf8, max_size=12),
                  st.sampled_from(["", "country", "device", "basket", "tier", "vip",
                                   "amount", "sku", "page", "seat", "web", "kiosk",
                                   "home_hero", "checkout", "fax", "\x00", "x" * 300]))
long_text = st.one_of(st.text(utf8, max_size=40), st.text(utf8, min_size=250, max_size=300),
                      st.sampled_from(["", " ", "\x00", "é" * 129, "😀" * 65, "x" * 20000,
                                       "é" * 5000]))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2.0 ** 63]))
values = st.one_of(
    st.just(pb.Value()),  # no kind set
    st.builds(lambda s: pb.Value(string_value=s), long_text),
    st.builds(lambda x: pb.Value(number_value=x), numbers),
    st.builds(lambda b: pb.Value(bool_value=b), st.booleans()),
)
value_maps = st.dictionaries(names, values, max_size=8) | st.dictionaries(
    st.text(utf8, min_size=1, max_size=6), values, min_size=60, max_size=70)
kinds = st.one_of(st.sampled_from(["", "customer_id", "cookie", "device_id",
                                   "email_sha256", "passport"]), st.text(utf8, max_size=10))
identifiers = st.builds(pb.Identifier, kind=kinds, value=long_text).filter(
    lambda i: i.value != SENTINEL)
channels = st.one_of(st.sampled_from(["web", "app", "kiosk", "contact_center", "email", ""]),
                     names)
placements = st.one_of(st.sampled_from(["", "home_hero", "checkout"]), names)
event_types = st.one_of(st.sampled_from(["purchase", "page_view", "tier_change",
                                         "seat_change", "add_to_cart", ""]), names)
int64 = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                  st.sampled_from([0, 1, int(time.time() * 1000), 1 << 62]))
events = st.builds(pb.Event, event_id=long_text, type=event_types, customer=identifiers,
                   timestamp_ms=int64, channel=channels, attributes=value_maps)


def decide_requests():
    def build(customer, channel, placement, limit, context):
        r = pb.DecideRequest(customer=customer, channel=channel, placement=placement,
                             context=context)
        if limit is not None:
            r.limit = limit
        return r
    return st.builds(build, identifiers, channels, placements,
                     st.none() | st.integers(-(1 << 31), (1 << 31) - 1), value_maps)


feature_maps = st.dictionaries(
    st.one_of(st.sampled_from(["recency", "frequency", "monetary", "app_user"]), names),
    st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=6)


# ------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    catalog = root / "catalog.toml"
    shutil.copy(TEST_CATALOG, catalog)
    proc = ServerProcess(root / "store", catalog, free_port(), "--threads", "8")
    try:
        proc.wait_ready()
        proc.catalog = catalog
        with grpc.insecure_channel(proc.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.UpsertProfile(pb.UpsertProfileRequest(
                identifiers=[ident(SENTINEL)], attributes={"tier": num(2),
                                                           "country": text("FR")},
                features={"frequency": 0.5}))
            stub.Track(pb.Event(type="purchase", customer=ident(SENTINEL),
                                attributes={"amount": num(12.5), "sku": text("A")}))
            proc.sentinel = stub.GetProfile(pb.GetProfileRequest(
                customer=ident(SENTINEL))).SerializeToString(deterministic=True)
        yield proc
        with grpc.insecure_channel(proc.address) as ch:
            after = pb_grpc.DecisionServiceStub(ch).GetProfile(pb.GetProfileRequest(
                customer=ident(SENTINEL)), timeout=TIMEOUT_S)
        assert after.SerializeToString(deterministic=True) == proc.sentinel
        assert proc.proc.poll() is None, "the server died while being fuzzed"
    finally:
        log = proc.stop()
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]
    print(f"\nfuzz examples per target: {COUNTS} (total {sum(COUNTS.values())})")


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as ch:
        yield pb_grpc.DecisionServiceStub(ch)


def expect_clean(target: str, call) -> grpc.StatusCode:
    """Run ``call``; its outcome must be OK or an allowed error with a message."""
    COUNTS[target] = COUNTS.get(target, 0) + 1
    try:
        call()
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in ALLOWED, (target, code, exc.details())
        assert exc.details(), (target, code, "no message")
        return code
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ every RPC
@FUZZ
@given(request=decide_requests())
def test_fuzz_decide(stub, request):
    expect_clean("Decide", lambda: stub.Decide(request, timeout=TIMEOUT_S))


@FUZZ
@given(customer=identifiers)
def test_fuzz_get_profile(stub, customer):
    expect_clean("GetProfile", lambda: stub.GetProfile(
        pb.GetProfileRequest(customer=customer), timeout=TIMEOUT_S))


@FUZZ
@given(ids=st.lists(identifiers, max_size=34), attributes=value_maps, features=feature_maps)
def test_fuzz_upsert_profile(stub, ids, attributes, features):
    request = pb.UpsertProfileRequest(identifiers=ids, attributes=attributes,
                                      features=features)
    expect_clean("UpsertProfile", lambda: stub.UpsertProfile(request, timeout=TIMEOUT_S))


@FUZZ
@given(channel=channels, placement=placements)
def test_fuzz_list_offers(stub, channel, placement):
    expect_clean("ListOffers", lambda: stub.ListOffers(
        pb.ListOffersRequest(channel=channel, placement=placement), timeout=TIMEOUT_S))


@FUZZ
@given(event=events)
def test_fuzz_track(stub, event):
    expect_clean("Track", lambda: stub.Track(event, timeout=TIMEOUT_S))


@settings(FUZZ, max_examples=int(30 * SCALE))
@given(batches=st.lists(st.lists(events, max_size=8), max_size=4))
def test_fuzz_track_stream(stub, batches):
    def call():
        summary = stub.TrackStream(iter([pb.EventBatch(events=b) for b in batches]),
                                   timeout=TIMEOUT_S)
        n = sum(len(b) for b in batches)
        assert summary.received == n
        assert summary.applied + summary.duplicates + summary.rejected_count == n
        assert all(r.message for r in summary.rejected)
    expect_clean("TrackStream", call)


@FUZZ
@given(ids=st.lists(identifiers, max_size=34))
def test_fuzz_identify(stub, ids):
    expect_clean("Identify", lambda: stub.Identify(pb.IdentifyRequest(identifiers=ids),
                                                   timeout=TIMEOUT_S))


@FUZZ
@given(customer=identifiers)
def test_fuzz_forget_customer(stub, customer):
    expect_clean("ForgetCustomer", lambda: stub.ForgetCustomer(
        pb.ForgetCustomerRequest(customer=customer), timeout=TIMEOUT_S))


@settings(FUZZ, max_examples=int(20 * SCALE))
@given(cursor=st.integers(0, (1 << 64) - 1), from_end=st.booleans())
def test_fuzz_watch_triggers(stub, cursor, from_end):
    def call():
        stream = stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=cursor,
                                                            from_end=from_end), timeout=0.3)
        try:
            for n, trigger in enumerate(stream):
                assert trigger.cursor >= max(1, cursor) or from_end
                if n == 20:
                    stream.cancel()
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED):
                raise
    expect_clean("WatchTriggers", call)


RULE_TOKENS = ["profile.tier", "profile.country", "profile.vip", "profile.nope",
               "context.country", "context.basket", "context.device", "counter.revenue",
               "counter.purchases", "segment.high_value", "segment.nope", "event.amount",
               "and", "or", "not", "in", "(", ")", "[", "]", ",", "==", "!=", "<", "<=", ">",
               ">=", "+", "-", "*", "/", "%", "**", "1", "0", "-1", "1e308", "1e309", "nan",
               '"FR"', "'BE'", '""', "True", "False", "None", "lambda x: x", "__import__",
               "x.y", "profile", ".", "if", "else", "@", "\\", "#", "\n", "'''", "\x00"]
rule_texts = st.one_of(
    st.lists(st.sampled_from(RULE_TOKENS), max_size=12).map(" ".join),
    st.text(utf8, max_size=60),
    st.sampled_from(["(" * 300 + "1" + ")" * 300, "not " * 5000 + "profile.vip",
                     "-" * 20000 + "1", " + ".join(["profile.tier"] * 3000) + " > 1",
                     "profile.tier in [" + ", ".join(["1"] * 5000) + "]"]),
)


def with_rule(rule: str, where: str = "offer") -> str:
    """The test catalog with one rule replaced by ``rule`` (as a TOML string)."""
    source = TEST_CATALOG.read_text()
    quoted = json.dumps(rule, ensure_ascii=False)
    if where == "offer":
        return source.replace("rule = 'profile.tier >= 2 and context.country == \"FR\"'",
                              f"rule = {quoted}")
    if where == "segment":
        return source.replace('browser = "counter.page_views >= 3 and '
                              'counter.purchases == 0"', f"browser = {quoted}")
    return source.replace('when = "not segment.high_value"', f"when = {quoted}")


@settings(FUZZ, max_examples=int(25 * SCALE))
@given(rule=rule_texts)
def test_fuzz_reload_catalog_with_any_rule(server, stub, rule):
    """A rule text sent to a running server (file + ReloadCatalog): it is compiled
    and swapped in, or refused with INVALID_ARGUMENT while the old one keeps serving."""
    original = server.catalog.read_text()
    server.catalog.write_text(with_rule(rule))
    try:
        code = expect_clean("ReloadCatalog", lambda: stub.ReloadCatalog(
            pb.ReloadCatalogRequest(), timeout=TIMEOUT_S * 3))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
        assert stub.Decide(pb.DecideRequest(customer=ident(SENTINEL), channel="web"),
                           timeout=TIMEOUT_S).offers
    finally:
        server.catalog.write_text(original)
    stub.ReloadCatalog(pb.ReloadCatalogRequest(), timeout=TIMEOUT_S * 3)


# ------------------------------------------------------------------ raw bytes
METHODS = pb.DESCRIPTOR.services_by_name["DecisionService"].methods


@settings(FUZZ, max_examples=int(40 * SCALE))
@given(payload=st.binary(max_size=300) | st.sampled_from(
    [b"\xff" * 20, b"\x0a\x05\xff\xfe\xfd\xfc\xfb", b"\x12\x02\xc3\x28", b"\x08" * 10]),
    method=st.sampled_from([m for m in METHODS]))
def test_fuzz_raw_bytes_to_every_method(server, payload, method):
    """Bytes that are (mostly) not a valid protobuf message: INVALID_ARGUMENT, or
    whatever the bytes happen to decode to; never INTERNAL, never a crash."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(server.address) as ch:
        if method.client_streaming:
            call = ch.stream_unary(path)
            run = lambda: call(iter([payload, payload]), timeout=TIMEOUT_S)  # noqa: E731
        elif method.server_streaming:
            call = ch.unary_stream(path)

            def run():
                try:
                    for _ in call(payload, timeout=0.3):
                        pass
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
        else:
            call = ch.unary_unary(path)
            run = lambda: call(payload, timeout=TIMEOUT_S)  # noqa: E731
        if method.name == "ReloadCatalog":
            return  # no fields: any bytes are a reload (covered above)
        expect_clean(f"raw {method.name}", run)


def test_invalid_utf8_in_a_string_field_is_invalid_argument(server):
    """Other languages' clients can send bytes that are not UTF-8 in a string field;
    the reply says which message could not be decoded."""
    # DecideRequest.channel (field 2, length-delimited) = b"\xc3\x28"
    with grpc.insecure_channel(server.address) as ch:
        call = ch.unary_unary("/decision.v1.DecisionService/Decide")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x12\x02\xc3\x28", timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "request: not a valid decision.v1.DecideRequest message")
    good = pb.EventBatch(events=[pb.Event(type="page_view", customer=ident("raw"))])
    with grpc.insecure_channel(server.address) as ch:
        call = ch.stream_unary("/decision.v1.DecisionService/TrackStream")
        with pytest.raises(grpc.RpcError) as err:
            call(iter([good.SerializeToString(), b"\x0a\x03\xff\xff\xff"]), timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("stream message 1: request: not a valid "
                                          "decision.v1.EventBatch message")


@pytest.mark.parametrize("value", ["x" * 100_000, "é" * 3000, "😀" * 20_000])
def test_an_error_echoing_a_huge_value_keeps_its_status(stub, value):
    """Regression: a status message quoting a long or non-ASCII request value went over
    gRPC's 8 KiB trailer limit, and the client saw RESOURCE_EXHAUSTED ("Stream
    removed") instead of INVALID_ARGUMENT; messages are now cut to fit."""
    for call in (lambda: stub.Decide(pb.DecideRequest(customer=ident("a"), channel=value)),
                 lambda: stub.Track(pb.Event(type=value, customer=ident("a"))),
                 lambda: stub.ListOffers(pb.ListOffersRequest(placement=value))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "(message cut, " in err.value.details()
    summary = stub.TrackStream(iter([pb.EventBatch(events=[
        pb.Event(type=value, customer=ident("a"))] * 3)]))
    assert summary.rejected_count == 3
    assert all(len(r.message.encode()) < 2000 for r in summary.rejected)


def test_a_message_over_the_size_limit_is_resource_exhausted(stub):
    huge = pb.UpsertProfileRequest(identifiers=[ident("huge")],
                                   attributes={"blob": text("x" * (5 << 20))})
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertProfile(huge, timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------ catalog loader
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}"
                           for k, x in v.items()) + "}"


toml_keys = st.one_of(
    st.sampled_from(["version", "channels", "placements", "profile", "context", "model",
                     "offer", "events", "segments", "triggers", "features", "attributes",
                     "counters", "id", "name", "value", "lever", "rule", "valid_from",
                     "valid_until", "creative", "intercept", "offer_features",
                     "customer_weights", "offer_weights", "interactions", "fields", "do",
                     "add", "set", "scale", "event", "when", "tier", "web"]),
    st.text(utf8, max_size=8))
toml_scalars = st.one_of(st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                         st.floats(), st.text(utf8, max_size=20), rule_texts)
toml_docs = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(toml_keys, inner, max_size=5),
    max_leaves=25)


def check_loader(tmp_path: Path, source: str) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(source, encoding="utf-8")
    COUNTS["catalog loader"] = COUNTS.get("catalog loader", 0) + 1
    try:
        load_catalog(path)
    except CatalogError as exc:
        assert str(exc).strip(), "a CatalogError without a message"


@settings(FUZZ, max_examples=int(150 * SCALE))
@given(doc=st.dictionaries(toml_keys, toml_docs, max_size=8))
def test_fuzz_catalog_of_any_shape(tmp_path_factory, doc):
    source = "\n".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}"
                       for k, v in doc.items())
    check_loader(tmp_path_factory.mktemp("c"), source)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _replaced(doc, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replaced(doc[head], rest, value)}
    return [_replaced(x, rest, value) if i == head else x for i, x in enumerate(doc)]


@settings(FUZZ, max_examples=int(150 * SCALE))
@given(data=st.data())
def test_fuzz_catalog_one_part_replaced(tmp_path_factory, data):
    """The valid test catalog with one part (anywhere in the tree) replaced by any
    value: it loads, or it is refused with a CatalogError naming the problem."""
    import tomllib

    doc = tomllib.loads(TEST_CATALOG.read_text())
    for key in ("offer",):  # datetimes are not produced by toml_value: keep them out
        for offer in doc[key]:
            offer.pop("valid_until", None)
    path = data.draw(st.sampled_from(list(_paths(doc))[1:]))
    doc = _replaced(doc, path, data.draw(toml_docs))
    source = "\n".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}"
                       for k, v in doc.items())
    check_loader(tmp_path_factory.mktemp("c"), source)


@settings(FUZZ, max_examples=int(100 * SCALE))
@given(rule=rule_texts, where=st.sampled_from(["offer", "segment", "trigger"]))
def test_fuzz_catalog_rules(tmp_path_factory, rule, where):
    check_loader(tmp_path_factory.mktemp("c"), with_rule(rule, where))


@pytest.mark.parametrize("source", [
    # found by the fuzzing above, each once a raw Python exception:
    "a = " + "[" * 5000 + "]" * 5000,  # RecursionError in tomllib
    "a = " + "{b = " * 3000 + "1" + "}" * 3000,
    "\ufeffversion = 1",
    "version = \"\x7f\"",
])
def test_deeply_nested_or_odd_toml_is_a_catalog_error(tmp_path, source):
    check_loader(tmp_path, source)


@pytest.mark.parametrize("old, new", [
    ('event = "add_to_cart"', "event = []"),  # TypeError: unhashable type: 'list'
])
def test_catalog_parts_of_the_wrong_type_are_catalog_errors(tmp_path, old, new):
    source = TEST_CATALOG.read_text()
    assert old in source
    path = tmp_path / "c.toml"
    path.write_text(source.replace(old, new))
    with pytest.raises(CatalogError):
        load_catalog(path)
