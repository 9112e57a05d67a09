"""The tail memo (``decision.core.tails.TailMemo``) past its limit, through its public
API, on real encoded profiles (``decision.store.layout.encode``) and the rule slots of
the demo catalog: it never holds more than ``limit`` profiles, a read evicts at most
one, a hit is only ever on identical bytes (eviction or not), hot profiles survive a
stream of one-off ones, ``forget`` and kept verdicts behave, and concurrent readers
keep all of that."""

from __future__ import annotations

import math
import random
import sys
import threading

import numpy as np
import pytest

from decision.config.catalog import load_catalog
from decision.config.rules import string_id
from decision.config.segments import fill_slots
from decision.core.prepared import Prepared
from decision.core.tails import SWEEP, TAIL, VALUES, VERDICTS, ZONES, TailMemo
from decision.demo import COUNTRIES, LANGUAGES, catalog_text
from decision.demo import ZONES as COUNTRY_ZONES
from decision.store import layout
from decision.store.layout import ProfileRecord

N_FEATURES = 32


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """(profile slots, zone attributes): the demo catalog's, plus a segment and a
    counter, so every namespace a rule reads is in the memo's values."""
    path = tmp_path_factory.mktemp("tails") / "catalog.toml"
    path.write_text(catalog_text(50, everywhere=True))
    prepared = Prepared(load_catalog(path))
    slots = prepared.profile_slots
    top = max(s for _, _, s, _ in slots)
    slots += (("segment", "frequent", top + 1, "bool"), ("counter", "visits", top + 2, "number"))
    assert prepared.tails.zone_attributes == ("timezone",)
    return slots, prepared.tails.zone_attributes


def profile(key: int, version: int = 0) -> bytes:
    """A stored profile value for ``key``; another ``version`` gives other tail bytes."""
    rng = np.random.default_rng(key * 1000 + version)
    country = COUNTRIES[(key + version) % len(COUNTRIES)]
    record = ProfileRecord(
        key=key, features=rng.normal(0, 1, N_FEATURES).astype(np.float32),
        attributes={"tier": float((key + version) % 4), "country": country,
                    "age": float(18 + (key * 7 + version) % 60), "vip": (key + version) % 5 == 0,
                    "has_app": key % 2 == 0, "language": LANGUAGES[key % len(LANGUAGES)],
                    "lifetime_value": round(100.0 + key + 0.5 * version, 2),
                    "timezone": COUNTRY_ZONES[country]},
        counters={"visits": float(version)},
        identifiers=[("customer_id", f"C{key:07d}")],
        segments=["frequent"] if version % 2 else [],
        created_at_ms=1_760_000_000_000 + key, updated_at_ms=1_760_000_000_000 + version)
    return layout.encode(record)


def read(memo: TailMemo, key: int, value: bytes) -> tuple:
    """``memo.read`` as the decision path calls it (a view of the stored value)."""
    n_features, _, tail_at = layout.read_head(value, key)
    return memo.read(memoryview(value), key, n_features, tail_at)


def expected(fields, key: int, version: int) -> tuple:
    """(values, zones) of ``profile(key, version)``, from its full decode (not the memo's
    code): the rule slot values in ``profile_slots`` order, the time zones."""
    slots, zone_attributes = fields
    record = layout.decode(profile(key, version), key)
    row = [math.nan] * (max(s for _, _, s, _ in slots) + 1)
    fill_slots(slots, record.attributes, record.counters, record.segments, row)
    zones = tuple(z if isinstance(z := record.attributes.get(name), str) else None
                  for name in zone_attributes)
    return tuple(row[s] for _, _, s, _ in slots), zones


def same(a: tuple, b: tuple) -> bool:
    """Equal value tuples, NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (isinstance(x, float) and math.isnan(x)
                                               and isinstance(y, float) and math.isnan(y))
                                    for x, y in zip(a, b))


def test_values_are_the_profile_fields(fields):
    memo = TailMemo(*fields, limit=4)
    kept = read(memo, 12, profile(12, 3))
    slot_of = {name: i for i, (_, name, _, _) in enumerate(fields[0])}
    values = kept[VALUES]
    assert values[slot_of["tier"]] == float((12 + 3) % 4)
    assert values[slot_of["country"]] == string_id(COUNTRIES[15 % len(COUNTRIES)])
    assert values[slot_of["frequent"]] == 1.0 and values[slot_of["visits"]] == 3.0
    assert kept[ZONES] == (COUNTRY_ZONES[COUNTRIES[15 % len(COUNTRIES)]],)
    assert kept[VERDICTS] is None
    assert kept[TAIL] == profile(12, 3)[layout.read_head(profile(12, 3), 12)[2]:]
    for key in range(1, 30):  # and the oracle the other tests use agrees, field by field
        for version in (0, 1):
            kept = read(memo, key, profile(key, version))
            assert same(kept[VALUES], expected(fields, key, version)[0])
            assert kept[ZONES] == expected(fields, key, version)[1]


def test_rejects_a_limit_below_one(fields):
    with pytest.raises(ValueError, match="limit"):
        TailMemo(*fields, limit=0)


def test_never_past_its_limit_and_one_eviction_per_read(fields):
    """Many more profiles than places: the memo fills up to its limit and stays there;
    a read of a new profile evicts at most one kept profile (the old memo emptied
    itself), and a hit evicts none."""
    limit = 16
    memo = TailMemo(*fields, limit=limit)
    universe = range(1, 301)

    def kept_keys() -> set[int]:
        return {key for key in universe if memo.peek(key) is not None}

    for key in universe:
        before = kept_keys()
        read(memo, key, profile(key))
        after = kept_keys()
        assert len(memo) == len(after) == min(key, limit), key
        assert key in after and len(before - after) <= 1, (key, before - after)
        if key % 3 == 0:  # a hit in between: nothing leaves
            hot = next(iter(after))
            read(memo, hot, profile(hot))
            assert kept_keys() == after


def test_a_read_passes_a_bounded_number_of_places(fields):
    """With every place hit (marked), the hand passes at most SWEEP of them, clearing
    their marks, and then evicts the profile it stands on: the one SWEEP places on."""
    limit = 3 * SWEEP
    memo = TailMemo(*fields, limit=limit)
    keys = list(range(1, limit + 1))
    kept = {key: read(memo, key, profile(key)) for key in keys}  # places 0.. in order
    for key in keys:
        assert read(memo, key, profile(key)) is kept[key]  # hits: every place marked
    read(memo, 9999, profile(9999))
    assert [key for key in keys if memo.peek(key) is None] == [keys[SWEEP]]
    assert len(memo) == limit
    # the hand goes on from there: past the next SWEEP marked places, to the one after
    read(memo, 9998, profile(9998))
    assert [key for key in keys if memo.peek(key) is None] == [keys[SWEEP], keys[2 * SWEEP + 1]]


def test_hot_profiles_survive_a_stream_of_one_off_ones(fields):
    """Second chance: a profile read again between insertions keeps its place, however
    many profiles are read once in between (a FIFO or a clear-all memo loses it)."""
    limit = 8
    memo = TailMemo(*fields, limit=limit)
    hot = [1, 2, 3, 4]
    kept = {key: read(memo, key, profile(key)) for key in hot}
    for one_off in range(100, 400):
        read(memo, one_off, profile(one_off))
        for key in hot:
            assert read(memo, key, profile(key)) is kept[key], (one_off, key)
        assert len(memo) <= limit
    # profiles read once are the ones that go
    assert all(memo.peek(key) is not None for key in hot)
    assert sum(memo.peek(key) is not None for key in range(100, 400)) == limit - len(hot)


def test_hits_stay_exact_through_evictions(fields):
    """Random reads of 60 keys whose stored values change, through 8 places: every
    read gives what its bytes decode to, and a hit (the kept tuple itself) happens only
    when the bytes are those last read for that key."""
    rng = random.Random(5)
    memo = TailMemo(*fields, limit=8)
    version = dict.fromkeys(range(1, 61), 0)
    last: dict[int, tuple] = {}
    truth: dict[tuple[int, int], tuple] = {}
    hits = misses = 0
    for _ in range(3000):
        key = rng.randrange(1, 61) if rng.random() < 0.5 else rng.randrange(1, 7)  # some hot
        if rng.random() < 0.15:
            version[key] += 1  # a write: other bytes
        value = profile(key, version[key])
        kept = read(memo, key, value)
        if (key, version[key]) not in truth:
            truth[key, version[key]] = expected(fields, key, version[key])
        values, zones = truth[key, version[key]]
        assert same(kept[VALUES], values) and kept[ZONES] == zones
        assert kept[TAIL] == value[layout.read_head(value, key)[2]:]
        if last.get(key) is kept:
            hits += 1
        else:
            misses += 1
            assert kept[VERDICTS] is None  # read anew: no verdicts carried over
        last[key] = kept
        assert len(memo) <= 8
    assert hits > 500 and misses > 500  # both paths exercised


def test_a_changed_profile_misses_after_its_place_was_reused(fields):
    memo = TailMemo(*fields, limit=2)
    first = read(memo, 7, profile(7, 0))
    read(memo, 8, profile(8))
    read(memo, 9, profile(9))  # 7 was not hit: evicted
    again = read(memo, 7, profile(7, 1))  # back, with other bytes
    assert again is not first and same(again[VALUES], expected(fields, 7, 1)[0])
    assert read(memo, 7, profile(7, 1)) is again  # now a hit
    changed = read(memo, 7, profile(7, 0))  # and back: other bytes again
    assert changed is not again and same(changed[VALUES], first[VALUES])


def test_forget(fields):
    memo = TailMemo(*fields, limit=4)
    kept = {key: read(memo, key, profile(key)) for key in (1, 2, 3, 4)}
    memo.forget(3)
    memo.forget(3)  # twice: nothing more
    memo.forget(42)  # never kept: nothing
    assert len(memo) == 3
    again = read(memo, 3, profile(3))
    assert again is not kept[3] and again[VERDICTS] is None
    assert len(memo) == 4
    for key in (1, 2, 4):
        memo.forget(key)
    assert len(memo) == 1
    # the freed places are taken again, never past the limit
    for key in range(10, 40):
        read(memo, key, profile(key))
        assert len(memo) <= 4
    assert len(memo) == 4


def test_verdicts_are_kept_per_entry_and_never_outlive_it(fields):
    memo = TailMemo(*fields, limit=2)
    kept = read(memo, 1, profile(1))
    memo.keep_verdicts(1, kept, np.array([1, 0, -1], dtype=np.int8))
    with_verdicts = read(memo, 1, profile(1))
    assert with_verdicts[VERDICTS].tolist() == [1, 0, -1]
    assert read(memo, 1, profile(1)) is with_verdicts
    other = read(memo, 2, profile(2))
    memo.keep_verdicts(2, other, np.array([0, 0, 1], dtype=np.int8))
    assert read(memo, 2, profile(2))[VERDICTS].tolist() == [0, 0, 1]
    assert read(memo, 1, profile(1))[VERDICTS].tolist() == [1, 0, -1]  # each its own
    # verdicts computed over bytes read before a write are not kept for the new bytes
    stale = read(memo, 1, profile(1))
    fresh = read(memo, 1, profile(1, 1))
    memo.keep_verdicts(1, stale, np.array([1, 1, 1], dtype=np.int8))
    assert read(memo, 1, profile(1, 1))[VERDICTS] is None
    memo.keep_verdicts(1, fresh, np.array([0, 1, 0], dtype=np.int8))
    assert read(memo, 1, profile(1, 1))[VERDICTS].tolist() == [0, 1, 0]
    # nor for a profile evicted meanwhile: keeping them does not bring it back
    evicted = read(memo, 3, profile(3))
    read(memo, 4, profile(4))
    read(memo, 5, profile(5))
    read(memo, 6, profile(6))
    assert len(memo) == 2
    memo.keep_verdicts(3, evicted, np.array([1, 1, 1], dtype=np.int8))
    assert len(memo) == 2
    assert read(memo, 3, profile(3))[VERDICTS] is None


def test_concurrent_readers_keep_it_bounded_and_exact(fields):
    """Threads reading, writing, keeping verdicts and forgetting at once (switching
    as often as the interpreter allows): never past the limit, every read exact."""
    limit = 12
    memo = TailMemo(*fields, limit=limit)
    values = {(k, v): profile(k, v) for k in range(1, 41) for v in range(3)}
    truth = {kv: expected(fields, *kv) for kv in values}
    errors: list = []
    sizes: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(8000):
                key, version = rng.randrange(1, 41), rng.randrange(3)
                kept = read(memo, key, values[key, version])
                want = truth[key, version]
                if not (same(kept[VALUES], want[0]) and kept[ZONES] == want[1]):
                    errors.append((key, version))
                r = rng.random()
                if r < 0.5:
                    memo.keep_verdicts(key, kept, np.array([version], dtype=np.int8))
                elif r < 0.52:
                    memo.forget(key)
                sizes.append(len(memo))
        except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:5]
    assert max(sizes) <= limit
    assert len(memo) == sum(memo.peek(key) is not None for key in range(1, 41))
    # what is left is consistent: reading every key again, and a new stream of profiles
    # through the memo, never go past the limit nor give a wrong value
    for key in range(1, 41):
        kept = read(memo, key, values[key, 0])
        assert same(kept[VALUES], truth[key, 0][0])
        kept = read(memo, key, values[key, 0])
        assert kept[VERDICTS] is None or kept[VERDICTS].tolist() == [0]
        assert len(memo) <= limit
    for key in range(100, 100 + 3 * limit):
        read(memo, key, profile(key))
        assert len(memo) <= limit
    assert len(memo) == limit
    assert sum(memo.peek(key) is not None for key in range(1, 100 + 3 * limit)) == limit
