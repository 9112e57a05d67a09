"""The Numba kernels against their plain NumPy references, on seeded random inputs.

Every kernel in ``kernels`` has a ``*_reference`` written independently in the same
module; these tests compare the two on random but valid inputs (rule programs come
from random well-typed expressions compiled by ``decision.config.rules``), and check that the
fused ``kernels.decide.decide_offers`` equals the composition of the single kernels.

The tests also run with ``NUMBA_DISABLE_JIT=1``: kernels then execute as Python over
NumPy scalars, which warn on IEEE events (x / 0, overflow) that compiled code performs
silently, so kernel calls go through ``quiet`` (pytest turns warnings into errors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from decision.config.rules import FieldTable, ProgramBuilder, string_id
from kernels import eligibility as vm
from decision.store.layout import NO_CONTACTS
from decision.config.policies import OUTCOMES, PolicySet, contact_tag
from kernels.decide import (LANES, decide_batch, decide_offers, new_verdicts,
                            visit_plan)
from kernels.policies import contact_blocks, contact_blocks_reference
from kernels.eligibility import eligible_mask, eligible_mask_reference
from kernels.scoring import (
    LOGIT_MAX,
    arbitrate,
    logit_of,
    arbitrate_reference,
    propensity,
    propensity_reference,
    top_contributions,
    top_contributions_reference,
)
from kernels.selection import top_k, top_k_reference

FIELDS = FieldTable(
    profile={"tier": "number", "country": "string", "vip": "bool"},
    context={"device": "string", "basket": "number"},
)
SLOT = {f"{ns}.{f.name}": f.slot for ns in ("profile", "context") for f in FIELDS.of(ns)}

NUMBER_FIELDS = ["profile.tier", "context.basket"]
STRING_FIELDS = ["profile.country", "context.device"]
BOOL_FIELDS = ["profile.vip"]
STRINGS = ["FR", "BE", "web", "app", ""]  # string_id("") is 0.0: must still differ from NaN
NUMBERS = ["0", "1", "2", "3", "-1", "0.5", "2.5", "-0.0", "1e308", "1e999"]
BOOLS = ["true", "false", "True", "False"]
COMPARE = ["==", "!=", "<", "<=", ">", ">="]
ARITH = ["+", "-", "*", "/"]

BITS = [0, 1, 2, 3, 62]  # channel / placement bits used by the random requests
NOW = 1_700_000_000.0


def quiet(fn, *args):
    with np.errstate(all="ignore"):
        return fn(*args)


# ------------------------------------------------------------ random valid rules
class ExprGen:
    """Random well-typed rule expressions (bool at the top) of bounded depth.

    Operands of ``and``/``or``, arithmetic and comparisons are parenthesised only at
    random: every unparenthesised form stays well-typed because each of those
    operators takes and returns one type family. The stack depth of a tree of height
    h is at most h + 2, far below ``MAX_STACK`` for the heights used here.
    """

    def __init__(self, rng: np.random.Generator, max_depth: int = 4):
        self.rng = rng
        self.max_depth = max_depth

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def paren(self, text: str) -> str:
        return f"({text})" if self.rng.random() < 0.5 else text

    def literal_list(self, kind: str) -> str:
        pool = {"number": NUMBERS, "string": [repr(s) for s in STRINGS], "bool": BOOLS}[kind]
        items = [self.pick(pool) for _ in range(int(self.rng.integers(1, 4)))]
        opener, closer = self.pick([("[", "]"), ("(", ",)"), ("{", "}")])
        return opener + ", ".join(items) + closer

    def number(self, d: int) -> str:
        if d <= 0 or self.rng.random() < 0.3:
            return self.pick(NUMBER_FIELDS) if self.rng.random() < 0.6 else self.pick(NUMBERS)
        if self.rng.random() < 0.15:
            return f"-({self.number(d - 1)})"
        op = self.pick(ARITH)
        return f"{self.paren(self.number(d - 1))} {op} ({self.number(d - 1)})"

    def string(self) -> str:
        if self.rng.random() < 0.6:
            return self.pick(STRING_FIELDS)
        return repr(self.pick(STRINGS))

    def boolean(self, d: int) -> str:
        leaf = ["field", "literal", "compare", "string_eq", "in_number", "in_string"]
        inner = ["not", "and", "or", "chain", "bool_eq", "and", "or"]
        kind = self.pick(leaf if d <= 0 else leaf + inner)
        if kind == "field":
            return self.pick(BOOL_FIELDS)
        if kind == "literal":
            return self.pick(BOOLS)
        if kind == "compare":
            return f"{self.number(d - 1)} {self.pick(COMPARE)} {self.number(d - 1)}"
        if kind == "string_eq":
            return f"{self.string()} {self.pick(['==', '!='])} {self.string()}"
        if kind in ("in_number", "in_string"):
            left = self.number(d - 1) if kind == "in_number" else self.string()
            negate = self.pick(["in", "not in"])
            return f"{left} {negate} {self.literal_list(kind[3:])}"
        if kind == "not":
            return f"not ({self.boolean(d - 1)})"
        if kind in ("and", "or"):
            parts = [self.paren(self.boolean(d - 1)) for _ in range(int(self.rng.integers(2, 4)))]
            return f" {kind} ".join(parts)
        if kind == "chain":
            ops = [self.pick(COMPARE) for _ in range(int(self.rng.integers(2, 4)))]
            text = self.number(d - 1)
            for op in ops:
                text += f" {op} {self.number(d - 1)}"
            return text
        # bool_eq: the operands must keep their parentheses
        return f"({self.boolean(d - 1)}) {self.pick(['==', '!='])} ({self.boolean(d - 1)})"

    def rule(self) -> str:
        return self.boolean(int(self.rng.integers(0, self.max_depth + 1)))


def random_programs(rng, n: int, rule_probability: float = 0.85):
    """(code, programs, consts, rules) for ``n`` offers, some without a rule."""
    builder = ProgramBuilder(FIELDS)
    gen = ExprGen(rng)
    programs = np.zeros((n, 2), dtype=np.int32)
    rules = []
    for i in range(n):
        text = gen.rule() if rng.random() < rule_probability else ""
        programs[i] = builder.add(text)  # a RuleError here is a generator bug
        rules.append(text)
    code, consts = builder.arrays()
    return code, programs, consts, rules


def random_bits(rng, allow_zero: bool) -> int:
    mask = 0
    for bit in BITS:
        if rng.random() < 0.4:
            mask |= 1 << bit
    if not mask and not allow_zero:
        mask = 1 << BITS[int(rng.integers(len(BITS)))]
    return mask


def random_offers(rng, n: int):
    """offer_masks int64[n, 2] and offer_window float64[n, 2] around NOW."""
    masks = np.zeros((n, 2), dtype=np.int64)
    window = np.zeros((n, 2), dtype=np.float64)
    starts = [-np.inf, NOW - 100.0, NOW, NOW + 1.0]
    ends = [np.inf, NOW + 100.0, NOW, NOW - 1.0]
    for i in range(n):
        masks[i, 0] = random_bits(rng, allow_zero=rng.random() < 0.05)
        masks[i, 1] = 0 if rng.random() < 0.3 else random_bits(rng, allow_zero=False)
        window[i, 0] = starts[int(rng.choice(4, p=[0.5, 0.3, 0.1, 0.1]))]
        window[i, 1] = ends[int(rng.choice(4, p=[0.5, 0.3, 0.1, 0.1]))]
    return masks, window


def random_slots(rng) -> np.ndarray:
    """One request's slot vector; NaN (missing) in every field now and then."""
    choices = {
        "profile.tier": [0.0, 1.0, 2.0, 3.0, 2.5, -1.0, 1e308],
        "profile.country": [string_id(s) for s in ("FR", "BE", "", "web")],
        "profile.vip": [0.0, 1.0],
        "context.device": [string_id(s) for s in ("web", "app", "FR", "")],
        "context.basket": [0.0, 10.5, -3.0, 0.5, 1e308, -0.0],
    }
    slots = np.full(FIELDS.size, np.nan)
    for name, values in choices.items():
        if rng.random() >= 0.2:
            slots[SLOT[name]] = values[int(rng.integers(len(values)))]
    return slots


def random_request(rng):
    channel_bit = 1 << BITS[int(rng.integers(len(BITS)))]
    placement_bit = 0 if rng.random() < 0.4 else 1 << BITS[int(rng.integers(len(BITS)))]
    return random_slots(rng), channel_bit, placement_bit


# ------------------------------------------------------------------- eligibility
@pytest.mark.parametrize("n", [0, 1, 7, 120])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eligible_mask_matches_reference(seed, n):
    rng = np.random.default_rng(1000 + seed)
    code, programs, consts, _ = random_programs(rng, n)
    masks, window = random_offers(rng, n)
    for _ in range(12):
        slots, channel_bit, placement_bit = random_request(rng)
        args = (code, programs, consts, slots, masks, window, channel_bit, placement_bit, NOW)
        got = quiet(eligible_mask, *args)
        want = quiet(eligible_mask_reference, *args)
        assert got.dtype == np.bool_ and got.shape == (n,)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m", [1, 5, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_run_programs_gives_every_customer_the_reference_verdicts(seed, m):
    """The batch rule VM (every program over m customers at once, jumps as per-customer
    resume rows) agrees with the reference for each customer and offer."""
    rng = np.random.default_rng(3000 + seed)
    n = 150
    code, programs, consts, _ = random_programs(rng, n, rule_probability=0.9)
    program, rules = vm.distinct_programs(programs)
    assert len({tuple(r) for r in rules.tolist()}) == rules.shape[0]
    slots = np.stack([random_slots(rng) for _ in range(m)])
    out = np.full((m, rules.shape[0]), -1, dtype=np.int8)
    quiet(vm.run_programs, code, consts, np.ascontiguousarray(slots.T), rules, out)
    everywhere = np.tile([1, 0], (n, 1)).astype(np.int64)
    always = np.tile([-np.inf, np.inf], (n, 1))
    for c in range(m):
        want = quiet(eligible_mask_reference, code, programs, consts, slots[c], everywhere,
                     always, 1, 0, NOW)
        got = [True if program[i] < 0 else bool(out[c, program[i]]) for i in range(n)]
        assert got == want.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_rules_compile_once_and_memo_matches_reference(seed):
    """Offers drawn from a small pool of rules share programs; the kernels evaluate
    each once per request (memo), the reference runs every offer's program."""
    rng = np.random.default_rng(2000 + seed)
    gen = ExprGen(rng)
    pool = [gen.rule() for _ in range(6)] + [""]
    builder = ProgramBuilder(FIELDS)
    n = 200
    texts = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
    programs = np.array([builder.add(t) for t in texts], dtype=np.int32)
    code, consts = builder.arrays()
    for a, b in ((a, b) for a in range(n) for b in range(a + 1, min(n, a + 5))):
        if texts[a] == texts[b]:
            assert (programs[a] == programs[b]).all()  # one program per distinct text
    distinct = {tuple(p) for p in programs.tolist()}
    assert code.shape[0] == sum(end - start for start, end in distinct)  # no copy per offer
    masks, window = random_offers(rng, n)
    features = 8
    weights = rng.normal(0, 1, (n, features)).astype(np.float32)
    bias = rng.normal(0, 1, n)
    offer_value = np.abs(rng.normal(5, 3, (n, 2)))
    for _ in range(12):
        slots, channel_bit, placement_bit = random_request(rng)
        args = (code, programs, consts, slots, masks, window, channel_bit, placement_bit, NOW)
        want = quiet(eligible_mask_reference, *args)
        np.testing.assert_array_equal(quiet(eligible_mask, *args), want)
        x = rng.normal(0, 1, features).astype(np.float32)
        answer = quiet(fused, code, programs, consts, slots, masks, window, offer_value,
                       weights, bias, x, channel_bit, placement_bit, NOW, 10, 3, NO_CONTACTS,
                       no_policies(n))
        assert answer[3] == want.sum()


def test_random_rules_exercise_every_opcode_and_both_outcomes():
    """Guard against a degenerate generator: all opcodes occur, rules pass and fail."""
    rng = np.random.default_rng(7)
    code, programs, consts, rules = random_programs(rng, 300, rule_probability=1.0)
    # every opcode but OR: ``or`` compiles to JUMP_TRUE (AND remains for ``1 < x < 3``)
    assert set(code[:, 0].tolist()) == set(range(vm.BOOL + 1)) - {vm.OR}
    assert code.shape[0] == programs[:, 1].max()
    n = len(rules)
    masks = np.ones((n, 2), dtype=np.int64)
    masks[:, 1] = 0
    window = np.tile([-np.inf, np.inf], (n, 1))
    outcomes = np.zeros(n, dtype=np.int64)
    for _ in range(20):
        got = quiet(eligible_mask, code, programs, consts, random_slots(rng), masks, window,
                    1, 0, NOW)
        outcomes += got
    assert 0.1 * 20 * n < outcomes.sum() < 0.9 * 20 * n
    assert (outcomes == 0).any() and (outcomes == 20).any()
    assert ((0 < outcomes) & (outcomes < 20)).any()


def test_eligibility_channel_placement_and_window():
    """The non-rule conditions, by hand, on offers without a rule."""
    n = 7
    code = np.zeros((0, 3), dtype=np.int32)
    programs = np.zeros((n, 2), dtype=np.int32)
    consts = np.zeros(0)
    slots = np.full(FIELDS.size, np.nan)
    masks = np.array([
        [0b01, 0],        # web, any placement
        [0b10, 0],        # app only
        [0b11, 0b100],    # placement bit 2 only
        [1 << 62, 0],     # the highest usable channel bit
        [0b01, 0],        # starts exactly now (inclusive)
        [0b01, 0],        # ends exactly now (exclusive)
        [0b01, 0],        # empty window
    ], dtype=np.int64)
    window = np.tile([-np.inf, np.inf], (n, 1))
    window[4] = [NOW, NOW + 1]
    window[5] = [NOW - 1, NOW]
    window[6] = [NOW + 1, NOW - 1]

    def mask(channel_bit, placement_bit):
        args = (code, programs, consts, slots, masks, window, channel_bit, placement_bit, NOW)
        got = eligible_mask(*args)
        np.testing.assert_array_equal(got, eligible_mask_reference(*args))
        return got.tolist()

    assert mask(0b01, 0) == [True, False, True, False, True, False, False]
    assert mask(0b10, 0) == [False, True, True, False, False, False, False]
    assert mask(0b01, 0b001) == [True, False, False, False, True, False, False]
    assert mask(0b01, 0b100) == [True, False, True, False, True, False, False]
    assert mask(1 << 62, 0) == [False, False, False, True, False, False, False]
    assert mask(1 << 5, 0) == [False] * n


def test_missing_values_as_documented():
    """NaN (missing): ``!=`` is true, every other comparison false; NaN is falsy."""
    cases = {
        "profile.tier == 1": False,
        "profile.tier != 1": True,
        "profile.tier < 1": False,
        "profile.tier <= 1": False,
        "profile.tier > 1": False,
        "profile.tier >= 1": False,
        "profile.tier == profile.tier": False,   # missing equals nothing, not even itself
        "profile.tier != profile.tier": True,
        "profile.tier in [1, 2]": False,
        "profile.tier not in [1, 2]": True,
        "profile.country == 'FR'": False,
        "profile.country != 'FR'": True,
        "profile.country == ''": False,          # "" has id 0.0, still unequal to missing
        "context.device == profile.country": False,
        "context.device != profile.country": True,
        "profile.vip": False,                    # NaN is falsy
        "profile.vip == true": False,
        "profile.vip == false": False,
        "not profile.vip": True,                 # not falsy
        "profile.vip or true": True,
        "profile.vip and true": False,
        "profile.tier + 1 > 0": False,           # arithmetic propagates NaN
        "profile.tier * 0 == 0": False,
        "-profile.tier != 0": True,
        "1 <= profile.tier < 3": False,
    }
    builder = ProgramBuilder(FIELDS)
    bounds = [builder.add(rule) for rule in cases]
    code, consts = builder.arrays()
    programs = np.array(bounds, dtype=np.int32).reshape(-1, 2)
    n = len(cases)
    masks = np.ones((n, 2), dtype=np.int64)
    window = np.tile([-np.inf, np.inf], (n, 1))
    slots = np.full(FIELDS.size, np.nan)
    args = (code, programs, consts, slots, masks, window, 1, 0, NOW)
    got = dict(zip(cases, quiet(eligible_mask, *args).tolist()))
    assert got == cases
    assert quiet(eligible_mask_reference, *args).tolist() == list(cases.values())


def test_hand_written_program_missing_slot_alone_is_falsy():
    """A program that leaves a bare NaN / 0 / non-zero number on the stack."""
    code = np.array([[vm.PUSH_SLOT, 0, 0], [vm.PUSH_CONST, 0, 0], [vm.PUSH_CONST, 1, 0],
                     [vm.PUSH_CONST, 2, 0]], dtype=np.int32)
    programs = np.array([[0, 1], [1, 2], [2, 3], [3, 4]], dtype=np.int32)
    consts = np.array([0.0, -2.5, np.inf])
    slots = np.array([np.nan])
    masks = np.ones((4, 2), dtype=np.int64)
    window = np.tile([-np.inf, np.inf], (4, 1))
    args = (code, programs, consts, slots, masks, window, 1, 0, NOW)
    assert eligible_mask(*args).tolist() == [False, False, True, True]
    assert eligible_mask_reference(*args).tolist() == [False, False, True, True]


# ----------------------------------------------------------------------- scoring
def random_model(rng, n: int, f: int, distinct_rows: int | None = None):
    """weights float32[n, f] (some zeros), bias float64[n], x float32[f] (some zeros)."""
    if distinct_rows is None:
        weights = rng.normal(0.0, 0.5, (n, f))
        bias = rng.normal(0.0, 1.0, n)
    else:  # rows repeat exactly, so scores tie exactly
        rows = rng.normal(0.0, 0.5, (distinct_rows, f))
        biases = rng.normal(0.0, 1.0, distinct_rows)
        pick = rng.integers(distinct_rows, size=n)
        weights, bias = rows[pick], biases[pick]
    weights = np.where(rng.random((n, f)) < 0.15, 0.0, weights).astype(np.float32)
    x = rng.normal(0.0, 1.0, f)
    x = np.where(rng.random(f) < 0.15, 0.0, x).astype(np.float32)
    return np.ascontiguousarray(weights), np.ascontiguousarray(bias, dtype=np.float64), x


@pytest.mark.parametrize(("n", "f"), [(0, 4), (1, 1), (1, 0), (17, 8), (400, 33)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_propensity_matches_reference(seed, n, f):
    rng = np.random.default_rng(2000 + seed)
    weights, bias, x = random_model(rng, n, f)
    mask = rng.random(n) < 0.7
    got = propensity(weights, bias, x, mask)
    want = propensity_reference(weights, bias, x, mask)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0.0)
    assert (got[~mask] == 0.0).all()
    assert ((got[mask] > 0.0) & (got[mask] < 1.0)).all()


def test_logit_accumulates_in_float64():
    """The products w * x are float32 (both are float32), their sum must be float64.

    1 + 1e-8 + 1e-8 is 1.0 in float32 but 1.00000002 in float64: a float32 accumulator
    loses the small terms (with NUMBA_DISABLE_JIT=1 ``z = 0.0; z += np.float32(..)``
    is a float32 sum under NumPy 2's promotion rules).
    """
    weights = np.array([[1.0, 1e-8, 1e-8]], dtype=np.float32)
    x = np.ones(3, dtype=np.float32)
    bias = np.array([0.25])
    small = float(np.float32(1e-8))
    want = 0.25 + 1.0 + 2 * small
    assert float(logit_of(weights, bias, x, 0)) == pytest.approx(want, rel=1e-13, abs=0.0)
    p = propensity(weights, bias, x, np.ones(1, dtype=np.bool_))[0]
    assert p == pytest.approx(1.0 / (1.0 + math.exp(-want)), rel=1e-13, abs=0.0)
    assert p == pytest.approx(propensity_reference(weights, bias, x, np.ones(1, bool))[0],
                              rel=1e-13, abs=0.0)


def test_propensity_is_stable_for_extreme_logits():
    weights = np.zeros((4, 2), dtype=np.float32)
    bias = np.array([1000.0, -1000.0, 0.0, 40.0])
    x = np.ones(2, dtype=np.float32)
    got = quiet(propensity, weights, bias, x, np.ones(4, dtype=np.bool_))
    # log-odds clamped to [-LOGIT_MAX, LOGIT_MAX]: strictly inside (0, 1), never 0 or 1
    e = math.exp(-LOGIT_MAX)
    top, bottom = 1.0 / (1.0 + e), e / (1.0 + e)
    assert got.tolist() == [top, pytest.approx(bottom, rel=1e-15), 0.5, top]
    assert np.isfinite(got).all() and ((got > 0.0) & (got < 1.0)).all()


@pytest.mark.parametrize("n", [0, 1, 9, 250])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arbitrate_matches_reference(seed, n):
    rng = np.random.default_rng(3000 + seed)
    p = rng.random(n)
    value = np.where(rng.random(n) < 0.2, 0.0, rng.choice([1.0, 5.0, 10.0, 37.5], n))
    lever = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], n)
    mask = rng.random(n) < 0.7
    got = arbitrate(p, value, lever, mask)
    want = arbitrate_reference(p, value, lever, mask)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)
    assert (got[~mask] == -np.inf).all()


@pytest.mark.parametrize(("n", "f", "m"), [(0, 3, 3), (1, 1, 1), (5, 8, 0), (5, 8, 3),
                                           (30, 16, 4), (6, 5, 9)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_contributions_matches_reference(seed, n, f, m):
    rng = np.random.default_rng(4000 + seed)
    weights, _, x = random_model(rng, n, f)
    chosen = rng.integers(n, size=min(n, 6)).astype(np.int32) if n else np.zeros(0, np.int32)
    idx, val = top_contributions(weights, x, chosen, m)
    want_idx, want_val = top_contributions_reference(weights, x, chosen, m)
    assert idx.dtype == np.int32 and idx.shape == (len(chosen), m)
    assert val.dtype == np.float64 and val.shape == (len(chosen), m)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(val, want_val, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_contributions_ties_and_zeros(seed):
    """Exact ties in |w * x| (either sign) go to the lower feature index; 0 is never a reason."""
    rng = np.random.default_rng(5000 + seed)
    n, f = 12, 10
    weights = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], (n, f)).astype(np.float32)
    x = rng.choice([-1.0, 0.0, 0.5, 1.0], f).astype(np.float32)
    chosen = np.arange(n, dtype=np.int32)[::-1].copy()
    for m in (1, 3, f, f + 2):
        idx, val = top_contributions(weights, x, chosen, m)
        want_idx, want_val = top_contributions_reference(weights, x, chosen, m)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(val, want_val)  # small dyadic values: exact
        assert (val[idx == -1] == 0.0).all() and (val[idx != -1] != 0.0).all()


def test_top_contributions_by_hand():
    weights = np.array([[1.0, -3.0, 3.0, 0.0, 2.0]], dtype=np.float32)
    x = np.array([1.0, 1.0, 1.0, 5.0, 0.0], dtype=np.float32)
    idx, val = top_contributions(weights, x, np.array([0], dtype=np.int32), 4)
    assert idx.tolist() == [[1, 2, 0, -1]]
    assert val.tolist() == [[-3.0, 3.0, 1.0, 0.0]]


# --------------------------------------------------------------------- selection
@pytest.mark.parametrize("n", [0, 1, 2, 13, 300])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_k_matches_reference(seed, n):
    rng = np.random.default_rng(6000 + seed)
    # few distinct values: many exact ties; -inf (ineligible), +inf and NaN too
    scores = rng.choice([0.0, 1.0, 2.5, 2.5, 7.0, -1.0, -np.inf, -np.inf, np.inf, np.nan], n)
    for k in sorted({1, 2, 5, n, n + 3} - {0}):
        got = top_k(scores, k)
        want = top_k_reference(scores, k)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
        finite_or_inf = int((~np.isnan(scores) & (scores != -np.inf)).sum())
        assert len(got) == min(k, finite_or_inf)


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_continuous_scores(seed):
    rng = np.random.default_rng(6500 + seed)
    scores = rng.random(500)
    scores[rng.random(500) < 0.3] = -np.inf
    for k in (1, 10, 499, 1000):
        np.testing.assert_array_equal(top_k(scores, k), top_k_reference(scores, k))


def test_top_k_ties_by_lower_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, -np.inf, 3.0, np.nan])
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 3).tolist() == [1, 2, 4]
    assert top_k(scores, 10).tolist() == [1, 2, 4, 6, 3, 0]
    assert top_k(np.zeros(5), 3).tolist() == [0, 1, 2]
    assert top_k(np.full(4, -np.inf), 2).tolist() == []
    assert top_k(np.zeros(0), 2).tolist() == []
    assert top_k(np.array([2.0, np.inf, 5.0, np.inf]), 3).tolist() == [1, 3, 2]


# ------------------------------------------------------------------------- fused
def composed(code, programs, consts, slots, masks, window, offer_value, weights, bias, x,
             channel_bit, placement_bit, now, k, n_reasons):
    """The pipeline decide_offers fuses, from the single kernels."""
    mask = eligible_mask(code, programs, consts, slots, masks, window, channel_bit,
                         placement_bit, now)
    p = propensity(weights, bias, x, mask)
    value = np.ascontiguousarray(offer_value[:, 0])
    lever = np.ascontiguousarray(offer_value[:, 1])
    s = arbitrate(p, value, lever, mask)
    chosen = top_k(s, k)
    r_feature, r_weight = top_contributions(weights, x, chosen, n_reasons)
    return chosen, s[chosen], p[chosen], int(mask.sum()), r_feature, r_weight


def fused(code, programs, consts, slots, masks, window, offer_value, weights, bias, x,
          channel_bit, placement_bit, now, k, n_reasons, contacts, policies):
    """``decide_offers`` over the visiting order the catalog computes, its packed rows
    unpacked to (chosen, score, propensity, eligible, reason features, reason weights,
    blocked) like the composition's."""
    visit = tuple(visit_plan(programs, masks, window, offer_value, weights, bias))
    eligible, ranked, blocked = decide_offers(code, consts, slots, visit, x, channel_bit,
                                              placement_bit, now, k, n_reasons, contacts,
                                              policies, new_verdicts(visit))
    return (ranked[:, 0].astype(np.int32), ranked[:, 1], ranked[:, 2], eligible,
            ranked[:, 4:4 + n_reasons].astype(np.int32), ranked[:, 4 + n_reasons:], blocked)


def no_policies(n: int) -> tuple:
    """The kernel's policy arguments for a catalog of n offers without policies."""
    return PolicySet([], ("c0",), [f"offer-{i}" for i in range(n)]).arrays


def random_values(rng, n: int) -> np.ndarray:
    value = rng.choice([0.0, 5.0, 10.0, 20.0, 45.0], n)
    lever = rng.choice([0.0, 0.5, 1.0, 1.0, 1.0, 2.0], n)
    return np.ascontiguousarray(np.stack([value, lever], axis=1).reshape(n, 2))


def check_fused(rng, n, f, k, n_reasons, readonly, distinct_rows=None, requests=6):
    code, programs, consts, _ = random_programs(rng, n, rule_probability=0.5)
    masks, window = random_offers(rng, n)
    offer_value = random_values(rng, n)
    weights, bias, x = random_model(rng, n, f, distinct_rows)
    if readonly:
        x.flags.writeable = False
    for _ in range(requests):
        slots, channel_bit, placement_bit = random_request(rng)
        args = (code, programs, consts, slots, masks, window, offer_value, weights, bias, x,
                channel_bit, placement_bit, NOW, k, n_reasons)
        chosen, score, prop, eligible, r_feature, r_weight, blocked = quiet(
            fused, *args, NO_CONTACTS, no_policies(n))
        assert (blocked == -1).all()
        w_chosen, w_score, w_prop, w_eligible, w_feature, w_weight = quiet(composed, *args)
        assert chosen.dtype == np.int32
        np.testing.assert_array_equal(chosen, w_chosen)
        np.testing.assert_allclose(score, w_score, rtol=1e-6, atol=0.0)
        np.testing.assert_allclose(prop, w_prop, rtol=1e-6, atol=0.0)
        assert int(eligible) == w_eligible
        assert len(chosen) == min(k, w_eligible)
        assert r_feature.shape == (len(chosen), n_reasons)
        np.testing.assert_array_equal(r_feature, w_feature)
        np.testing.assert_allclose(r_weight, w_weight, rtol=1e-6, atol=0.0)
        # and the eligibility part against the NumPy reference as well
        ref_mask = quiet(eligible_mask_reference, code, programs, consts, slots, masks,
                         window, channel_bit, placement_bit, NOW)
        assert int(ref_mask.sum()) == w_eligible


@pytest.mark.parametrize(("n", "f", "k", "n_reasons"), [
    (0, 4, 1, 3),      # no offers at all
    (1, 3, 1, 2),      # one offer
    (1, 3, 5, 0),      # k larger than the catalog, no reasons
    (25, 6, 3, 3),
    (25, 6, 40, 4),    # k larger than the number of eligible offers
    (150, 12, 5, 3),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decide_offers_equals_composition(seed, n, f, k, n_reasons):
    check_fused(np.random.default_rng(7000 + seed), n, f, k, n_reasons, readonly=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decide_offers_ties_and_readonly_features(seed):
    """Repeated model rows and values: exact score ties, broken by lower offer index."""
    rng = np.random.default_rng(8000 + seed)
    check_fused(rng, 60, 5, 8, 3, readonly=True, distinct_rows=3)
    check_fused(rng, 60, 5, 100, 2, readonly=True, distinct_rows=2)


def test_decide_offers_tie_break_by_hand():
    n = 5
    code = np.zeros((0, 3), dtype=np.int32)
    programs = np.zeros((n, 2), dtype=np.int32)
    masks = np.ones((n, 2), dtype=np.int64)
    masks[1, 0] = 0b10  # offer 1 is not on channel 1
    window = np.tile([-np.inf, np.inf], (n, 1))
    offer_value = np.array([[10.0, 1.0], [99.0, 1.0], [5.0, 2.0], [10.0, 1.0], [1.0, 0.0]])
    weights = np.zeros((n, 2), dtype=np.float32)
    bias = np.zeros(n)
    x = np.array([1.0, 2.0], dtype=np.float32)
    x.flags.writeable = False
    chosen, score, prop, eligible, r_feature, r_weight, _ = fused(
        code, programs, np.zeros(0), np.zeros(0), masks, window, offer_value, weights, bias,
        x, 1, 0, NOW, 10, 2, NO_CONTACTS, no_policies(n))
    assert chosen.tolist() == [0, 2, 3, 4]   # 5.0, 5.0, 5.0, 0.0: ties by index
    assert score.tolist() == [5.0, 5.0, 5.0, 0.0]
    assert prop.tolist() == [0.5] * 4
    assert eligible == 4
    assert r_feature.tolist() == [[-1, -1]] * 4  # zero weights: no reasons
    assert r_weight.tolist() == [[0.0, 0.0]] * 4


# ------------------------------------------------------------------------- policies
CHANNELS = ("web", "app", "kiosk", "email", "sms")


def random_policies(rng, offer_ids: list[str]) -> PolicySet:
    specs = []
    for j in range(int(rng.integers(0, 7))):
        ptype = str(rng.choice(["cap", "cap", "suppress", "cooldown"]))
        spec: dict = {"name": f"p{j}", "type": ptype}
        if ptype == "cap":
            spec.update(scope=str(rng.choice(["offer", "channel", "customer"])),
                        count=str(rng.choice(list(OUTCOMES))), max=int(rng.integers(1, 4)),
                        per=f"{int(rng.integers(1, 10))}d")
        elif ptype == "suppress":
            spec.update({"after": str(rng.choice(list(OUTCOMES))),
                         "for": f"{int(rng.integers(1, 200))}h"})
        else:
            spec["for"] = f"{int(rng.integers(1, 48))}h"
        if rng.random() < 0.4:
            spec["channels"] = [str(c) for c in rng.choice(CHANNELS, int(rng.integers(1, 3)),
                                                         replace=False)]
        if rng.random() < 0.3 and offer_ids:
            spec["offers"] = [str(o) for o in rng.choice(
                offer_ids, int(rng.integers(1, len(offer_ids) + 1)), replace=False)]
        specs.append(spec)
    return PolicySet(specs, CHANNELS, offer_ids)


def random_contacts(rng, offer_ids: list[str], now_ms: int, most: int = 40) -> np.ndarray:
    """Contacts with the catalog's offers and channels, and some with ones it does not
    know (an offer removed since, a channel renamed), some in the future."""
    h = int(rng.integers(0, most + 1))
    offers = [*offer_ids, "gone-offer"] if offer_ids else ["gone-offer"]
    at = np.sort(now_ms - rng.integers(-3_600_000, 12 * 86_400_000, h))
    tags = [contact_tag(str(rng.choice(offers)), str(rng.choice([*CHANNELS, "fax"])),
                        int(rng.integers(1, 5))) for _ in range(h)]
    out = np.zeros((h, 2), dtype=np.int64)
    out[:, 0], out[:, 1] = at, tags
    return out


@pytest.mark.parametrize("n", [1, 7, 60])
@pytest.mark.parametrize("seed", range(6))
def test_contact_blocks_matches_reference(seed, n):
    rng = np.random.default_rng(9000 + seed)
    offer_ids = [f"offer-{i}" for i in range(n)]
    now_ms = 1_700_000_000_000
    for _ in range(8):
        policies = random_policies(rng, offer_ids)
        contacts = random_contacts(rng, offer_ids, now_ms)
        channel_bit = 1 << int(rng.integers(0, len(CHANNELS)))
        blocked = np.empty(n, dtype=np.int32)
        count = contact_blocks(contacts, now_ms, channel_bit, *policies.arrays, blocked)
        want = contact_blocks_reference(contacts, now_ms, channel_bit, *policies.arrays)
        np.testing.assert_array_equal(blocked, want)
        assert count == int((want >= 0).sum())


def test_contact_blocks_by_hand():
    offers = ["bags", "shoes", "socks"]
    policies = PolicySet([
        {"name": "weekly", "type": "cap", "max": 2, "per": "7d"},
        {"name": "email-daily", "type": "cap", "scope": "channel", "max": 1, "per": "1d",
         "channels": ["email"]},
        {"name": "bought", "type": "suppress", "after": "conversion", "for": "30d",
         "offers": ["socks"]},
    ], CHANNELS, offers)
    day = 86_400_000
    now = 100 * day
    web, email = 1 << CHANNELS.index("web"), 1 << CHANNELS.index("email")
    contacts = np.array([
        [now - 8 * day, contact_tag("bags", "web", 1)],      # out of the week
        [now - 2 * day, contact_tag("bags", "web", 1)],
        [now - 1 * day, contact_tag("bags", "app", 1)],      # 2 in 7 days: capped
        [now - 3 * day, contact_tag("shoes", "web", 3)],     # a conversion, not socks
        [now - 2 * day, contact_tag("socks", "web", 3)],     # socks bought: suppressed
        [now - 3_600_000, contact_tag("shoes", "email", 1)],  # an e-mail this hour
    ], dtype=np.int64)
    blocked = np.empty(3, dtype=np.int32)
    assert contact_blocks(contacts, now, web, *policies.arrays, blocked) == 2
    assert blocked.tolist() == [0, -1, 2]
    assert contact_blocks(contacts, now, email, *policies.arrays, blocked) == 3
    assert blocked.tolist() == [0, 1, 1]  # weekly first for bags, then the e-mail cap
    assert contact_blocks(contacts, now + 30 * day, web, *policies.arrays, blocked) == 0
    assert blocked.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("m", [40, 2 * LANES + 3])
def test_decide_offers_removes_blocked_offers_and_batch_agrees(rng, m):
    """decide_offers with policies equals the composition with the policy mask, and
    both batch kernels give every customer exactly decide_offers' answer (also over
    several blocks of LANES customers whose rules run together, the last one under
    TABLE_MIN: its customers run their own rules)."""
    n, f, k = 80, 6, 5
    offer_ids = [f"offer-{i}" for i in range(n)]
    code, programs, consts, _ = random_programs(rng, n, rule_probability=0.5)
    masks, window = random_offers(rng, n)
    offer_value = random_values(rng, n)
    weights, bias, _ = random_model(rng, n, f)
    rows_slots, rows_x, histories = [], [], []
    policies = random_policies(rng, offer_ids)
    while not policies.policies:
        policies = random_policies(rng, offer_ids)
    channel_bit = 1 << int(rng.integers(0, len(CHANNELS)))
    for _ in range(m):
        slots, _, _ = random_request(rng)
        rows_slots.append(slots)
        rows_x.append(rng.normal(0, 1, f).astype(np.float32))
        histories.append(random_contacts(rng, offer_ids, int(NOW * 1000)))
    blocked_any = 0
    for slots, x, contacts in zip(rows_slots, rows_x, histories):
        args = (code, programs, consts, slots, masks, window, offer_value, weights, bias, x,
                channel_bit, 0, NOW, k, 3)
        chosen, score, prop, eligible, _, _, blocked = quiet(
            fused, *args, contacts, policies.arrays)
        want = quiet(contact_blocks_reference, contacts, int(NOW * 1000), channel_bit,
                     *policies.arrays)
        np.testing.assert_array_equal(blocked, want)
        blocked_any += int((blocked >= 0).sum())
        mask = quiet(eligible_mask, code, programs, consts, slots, masks, window, channel_bit,
                     0, NOW) & (blocked < 0)
        assert int(eligible) == int(mask.sum())
        assert all(mask[i] for i in chosen)
    assert blocked_any, "the random policies never blocked anything: a degenerate test"
    starts = np.cumsum([0] + [len(h) for h in histories]).astype(np.int64)
    flat = np.ascontiguousarray(np.concatenate(histories).reshape(-1, 2))
    visit = tuple(visit_plan(programs, masks, window, offer_value, weights, bias))
    batch_args = (code, consts, np.stack(rows_slots), visit, np.stack(rows_x), flat, starts,
                  channel_bit, 0, NOW, k, policies.arrays)
    for kernel in (decide_batch,):
        chosen_b, score_b, prop_b, filled, eligible_b = quiet(kernel, *batch_args)
        for c in range(m):
            one = quiet(fused, code, programs, consts, rows_slots[c], masks, window,
                        offer_value, weights, bias, rows_x[c], channel_bit, 0, NOW, k, 3,
                        histories[c], policies.arrays)
            r = len(one[0])
            assert filled[c] == r and eligible_b[c] == one[3]
            assert chosen_b[c, :r].tolist() == one[0].tolist()
            assert (chosen_b[c, r:] == -1).all()
            np.testing.assert_allclose(score_b[c, :r], one[1], rtol=1e-12)
            np.testing.assert_allclose(prop_b[c, :r], one[2], rtol=1e-12)


# ------------------------------------------------- extreme (finite) feature values
F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45
EXTREME = [F32_MAX, -F32_MAX, 3.4e38, -3.4e38, 1e38, -1e30, F32_TINY, -F32_TINY, 1e-40,
           -3e-39, 0.0, 1.0, -2.5]


def test_logit_of_extreme_features_is_finite_and_clamped():
    """3.4e38 x 3 overflows float32: the products are float64, the log-odds clamped."""
    weights = np.array([[3.0, 3.0], [3.0, -3.0], [-3.0, 3.0], [3.0, 0.0], [0.0, 0.0],
                        [1e-30, 0.0]], dtype=np.float32)
    bias = np.array([0.0, 0.0, 0.0, 0.5, 37.0, 0.25])
    x = np.array([F32_MAX, -F32_MAX], dtype=np.float32)
    got = [float(logit_of(weights, bias, x, i)) for i in range(len(weights))]
    # +inf - inf would be NaN in float32; float64: 3 F - 3 F = 0 exactly
    want_raw = [0.0, 6.0 * F32_MAX, -6.0 * F32_MAX, 3.0 * F32_MAX + 0.5, 37.0,
                float(np.float32(1e-30)) * F32_MAX + 0.25]
    assert got == [max(-LOGIT_MAX, min(LOGIT_MAX, z)) for z in want_raw]
    mask = np.ones(len(weights), dtype=np.bool_)
    p = quiet(propensity, weights, bias, x, mask)
    assert np.isfinite(p).all() and ((p > 0.0) & (p < 1.0)).all()
    np.testing.assert_allclose(p, quiet(propensity_reference, weights, bias, x, mask),
                               rtol=1e-12, atol=0.0)
    assert p[0] == 0.5 and p[1] == p[3] == p[4] < 1.0 and p[2] > 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_extreme_features_score_finite_and_match_reference(seed):
    """Features anywhere in float32's finite range (both extremes, mixed signs,
    subnormals): finite propensities strictly inside (0, 1), finite reasons equal to
    the exact float64 products, as the references compute them."""
    rng = np.random.default_rng(11000 + seed)
    n, f = 40, 9
    weights = rng.choice([-3.0, -0.5, 0.0, 1e-3, 2.0, 3.0, 1e-38], (n, f)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, n)
    x = rng.choice(EXTREME, f).astype(np.float32)
    mask = rng.random(n) < 0.8
    p = quiet(propensity, weights, bias, x, mask)
    assert np.isfinite(p).all() and ((p[mask] > 0.0) & (p[mask] < 1.0)).all()
    np.testing.assert_allclose(p, quiet(propensity_reference, weights, bias, x, mask),
                               rtol=1e-12, atol=0.0)
    chosen = np.arange(n, dtype=np.int32)
    for m in (1, 3, f):
        idx, val = quiet(top_contributions, weights, x, chosen, m)
        want_idx, want_val = quiet(top_contributions_reference, weights, x, chosen, m)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(val, want_val)  # float64 products of float32: exact
        assert np.isfinite(val).all()


def test_subnormal_features_are_reasons_not_lost():
    """A subnormal float32 feature times a weight is a normal float64: still reported."""
    weights = np.array([[3.0, -0.5, 0.0]], dtype=np.float32)
    x = np.array([F32_TINY, -3e-39, 1e-45], dtype=np.float32)
    idx, val = top_contributions(weights, x, np.array([0], dtype=np.int32), 3)
    assert idx.tolist() == [[1, 0, -1]]
    assert val.tolist() == [[-0.5 * float(x[1]), 3.0 * float(x[0]), 0.0]]
    assert float(logit_of(weights, np.array([-1.0]), x, 0)) == -1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decide_offers_with_extreme_features_ranks_every_eligible_offer(seed):
    """Extreme features through the fused kernel (and the batch kernel): every
    eligible offer up to k is returned, with finite scores, propensities in (0, 1),
    finite reasons; the same answer as the composition, and the same on every call."""
    rng = np.random.default_rng(12000 + seed)
    n, f, k, n_reasons = 60, 8, 10, 3
    code, programs, consts, _ = random_programs(rng, n, rule_probability=0.4)
    masks, window = random_offers(rng, n)
    offer_value = random_values(rng, n)
    weights = rng.choice([-3.0, -1.0, 0.0, 0.5, 3.0], (n, f)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, n)
    rows_x, rows_slots = [], []
    for _ in range(6):
        x = rng.choice(EXTREME, f).astype(np.float32)
        x[:2] = (F32_MAX, -F32_MAX)
        slots, _, _ = random_request(rng)
        args = (code, programs, consts, slots, masks, window, offer_value, weights, bias, x,
                1, 0, NOW, k, n_reasons)
        first = quiet(fused, *args, NO_CONTACTS, no_policies(n))
        chosen, score, prop, eligible, r_feature, r_weight, _ = first
        again = quiet(fused, *args, NO_CONTACTS, no_policies(n))
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
        w_chosen, w_score, w_prop, w_eligible, w_feature, w_weight = quiet(composed, *args)
        np.testing.assert_array_equal(chosen, w_chosen)
        np.testing.assert_allclose(score, w_score, rtol=1e-12, atol=0.0)
        np.testing.assert_allclose(prop, w_prop, rtol=1e-12, atol=0.0)
        assert int(eligible) == w_eligible and len(chosen) == min(k, w_eligible)
        np.testing.assert_array_equal(r_feature, w_feature)
        np.testing.assert_array_equal(r_weight, w_weight)
        assert np.isfinite(score).all() and np.isfinite(r_weight).all()
        assert ((prop > 0.0) & (prop < 1.0)).all()
        assert all(score[q] >= score[q + 1] for q in range(len(score) - 1))
        rows_x.append(x)
        rows_slots.append(slots)
    visit = tuple(visit_plan(programs, masks, window, offer_value, weights, bias))
    m = len(rows_x)
    chosen_b, score_b, prop_b, filled, eligible_b = quiet(
        decide_batch, code, consts, np.stack(rows_slots), visit, np.stack(rows_x),
        NO_CONTACTS, np.zeros(m + 1, dtype=np.int64), 1, 0, NOW, k, no_policies(n))
    for c in range(m):
        one = quiet(fused, code, programs, consts, rows_slots[c], masks, window, offer_value,
                    weights, bias, rows_x[c], 1, 0, NOW, k, n_reasons, NO_CONTACTS,
                    no_policies(n))
        r = len(one[0])
        assert filled[c] == r and eligible_b[c] == one[3]
        assert chosen_b[c, :r].tolist() == one[0].tolist()
        assert score_b[c, :r].tolist() == one[1].tolist()
        assert prop_b[c, :r].tolist() == one[2].tolist()
