"""The rule language: compile with ``decision.config.rules`` and evaluate through the kernel.

Valid rules are checked against expectations written by hand, evaluated by
``kernels.eligibility.eligible_mask`` on one offer (and, as a cross-check, by its NumPy
reference); invalid rules must raise ``RuleError`` with a message naming the problem.
"""

from __future__ import annotations

import numpy as np
import pytest

from decision.errors import CatalogError, RuleError
from decision.config.rules import FieldTable, ProgramBuilder, string_id
from kernels.eligibility import MAX_STACK, eligible_mask, eligible_mask_reference

FIELDS = FieldTable(
    profile={"tier": "number", "country": "string", "vip": "bool"},
    context={"device": "string", "basket": "number"},
)


def slots_of(values: dict[str, object]) -> np.ndarray:
    """The slot vector for ``{"profile.tier": 2, ...}``; absent fields are missing (NaN)."""
    slots = np.full(FIELDS.size, np.nan)
    for key, v in values.items():
        namespace, name = key.split(".")
        field = FIELDS.get(namespace, name)
        assert field is not None, key
        if isinstance(v, str):
            slots[field.slot] = string_id(v)
        else:
            slots[field.slot] = float(v)
    return slots


def evaluate(rule: str, **values) -> bool:
    """Compile ``rule`` alone and run it for one offer in scope; keys use '__' for '.'."""
    builder = ProgramBuilder(FIELDS)
    start, end = builder.add(rule)
    code, consts = builder.arrays()
    slots = slots_of({k.replace("__", "."): v for k, v in values.items()})
    args = (code, np.array([[start, end]], dtype=np.int32), consts, slots,
            np.array([[1, 0]], dtype=np.int64), np.array([[-np.inf, np.inf]]), 1, 0, 0.0)
    # IEEE events (x / 0) warn when the kernels run as Python (NUMBA_DISABLE_JIT=1)
    with np.errstate(all="ignore"):
        got = eligible_mask(*args)
        want = eligible_mask_reference(*args)
    assert got.shape == (1,)
    assert bool(got[0]) == bool(want[0]), f"kernel and reference disagree on {rule!r}"
    return bool(got[0])


# ---------------------------------------------------------------- valid rules
NUMBER_CASES = [
    ("profile.tier >= 2", {"profile__tier": 2}, True),
    ("profile.tier >= 2", {"profile__tier": 1.5}, False),
    ("profile.tier == 2.0", {"profile__tier": 2}, True),
    ("profile.tier != 2", {"profile__tier": 2}, False),
    ("profile.tier > -1", {"profile__tier": -0.5}, True),
    ("profile.tier < -1", {"profile__tier": -0.5}, False),
    ("-profile.tier < 0", {"profile__tier": 3}, True),
    ("- -profile.tier == 3", {"profile__tier": 3}, True),
    ("profile.tier * 2 + 1 == 7", {"profile__tier": 3}, True),
    ("1 + profile.tier * 2 == 7", {"profile__tier": 3}, True),     # * binds tighter
    ("(1 + profile.tier) * 2 == 8", {"profile__tier": 3}, True),
    ("profile.tier - 1 - 1 == 0", {"profile__tier": 2}, True),     # left-associative
    ("profile.tier / 2 / 2 == 1", {"profile__tier": 4}, True),
    ("profile.tier / 2 == 1.5", {"profile__tier": 3}, True),
    ("context.basket / (profile.tier + 1) > 50", {"profile__tier": 1, "context__basket": 101},
     True),
    ("context.basket / (profile.tier + 1) > 50", {"profile__tier": 1, "context__basket": 100},
     False),
    ("profile.tier == context.basket", {"profile__tier": 7, "context__basket": 7}, True),
    ("0.1 + 0.2 == 0.3", {}, False),                                # IEEE, not decimal
    ("0.5 + 0.25 == 0.75", {}, True),
    ("1e308 * 10 > 1e308", {}, True),                               # overflow to inf
    ("1e999 > 1e308", {}, True),                                    # the literal is inf
    ("-0.0 == 0", {}, True),
]

DIVISION_CASES = [
    ("context.basket / 0 > 1e308", {"context__basket": 1}, True),       # +inf
    ("context.basket / 0 == 1e999", {"context__basket": 5}, True),
    ("context.basket / 0 < -1e308", {"context__basket": -1}, True),     # -inf
    ("context.basket / 0 == context.basket / 0", {"context__basket": 0}, False),  # NaN
    ("context.basket / 0 != context.basket / 0", {"context__basket": 0}, True),
    ("context.basket / 0 > 0", {"context__basket": 0}, False),
    ("1 / 0 > 0", {}, True),
    ("-1 / 0 < 0", {}, True),
    ("profile.tier / context.basket >= 0", {"profile__tier": 1, "context__basket": 0}, True),
    ("1 / (1 / 0) == 0", {}, True),                                     # 1 / inf
]

STRING_CASES = [
    ('profile.country == "FR"', {"profile__country": "FR"}, True),
    ('profile.country == "FR"', {"profile__country": "BE"}, False),
    ('profile.country == "FR"', {"profile__country": "fr"}, False),    # case-sensitive
    ("profile.country == 'FR'", {"profile__country": "FR"}, True),
    ('"FR" == profile.country', {"profile__country": "FR"}, True),
    ('profile.country != "FR"', {"profile__country": "BE"}, True),
    ('profile.country != "FR"', {"profile__country": "FR"}, False),
    ('profile.country == ""', {"profile__country": ""}, True),
    ('profile.country == ""', {}, False),                              # missing is not ""
    ('profile.country == "Zürich"', {"profile__country": "Zürich"}, True),
    ('"a" == "a"', {}, True),
    ('"a" != "b"', {}, True),
    # field against field
    ("context.device == profile.country", {"context__device": "FR", "profile__country": "FR"},
     True),
    ("context.device == profile.country", {"context__device": "web", "profile__country": "FR"},
     False),
    ("context.device != profile.country", {"context__device": "web", "profile__country": "FR"},
     True),
    ("context.device == profile.country", {}, False),
    ("context.device == profile.country", {"profile__country": "FR"}, False),
    ("context.device != profile.country", {}, True),
]

BOOL_CASES = [
    ("profile.vip", {"profile__vip": True}, True),
    ("profile.vip", {"profile__vip": False}, False),
    ("profile.vip == true", {"profile__vip": True}, True),
    ("profile.vip == True", {"profile__vip": True}, True),
    ("profile.vip == false", {"profile__vip": False}, True),
    ("profile.vip == False", {"profile__vip": True}, False),
    ("profile.vip != true", {"profile__vip": False}, True),
    ("not profile.vip", {"profile__vip": False}, True),
    ("not not profile.vip", {"profile__vip": True}, True),
    ("true", {}, True),
    ("True", {}, True),
    ("false", {}, False),
    ("False", {}, False),
    ("true and not false", {}, True),
    ("true == (1 < 2)", {}, True),
    ("(profile.tier > 1) == (profile.tier > 2)", {"profile__tier": 3}, True),
    ("(profile.tier > 1) == (profile.tier > 2)", {"profile__tier": 1.5}, False),
    ("(profile.tier > 1) != profile.vip", {"profile__tier": 3, "profile__vip": False}, True),
    # and / or / not and their precedence
    ("profile.vip and profile.tier > 1", {"profile__vip": True, "profile__tier": 2}, True),
    ("profile.vip and profile.tier > 1", {"profile__vip": True, "profile__tier": 1}, False),
    ("profile.vip or profile.tier > 1", {"profile__vip": False, "profile__tier": 2}, True),
    ("profile.vip or profile.tier > 1", {"profile__vip": False, "profile__tier": 0}, False),
    ("not profile.tier > 2", {"profile__tier": 1}, True),             # not (tier > 2)
    ("false and true or true", {}, True),                              # (f and t) or t
    ("false and (true or true)", {}, False),
    ("true or true and false", {}, True),                              # t or (t and f)
    ("not true or true", {}, True),                                    # (not t) or t
    ("not (true or true)", {}, False),
    ('profile.tier >= 2 and context.device == "web" and not profile.vip',
     {"profile__tier": 2, "context__device": "web", "profile__vip": False}, True),
]

MEMBERSHIP_CASES = [
    ("profile.tier in [1, 2]", {"profile__tier": 2}, True),
    ("profile.tier in [1, 2]", {"profile__tier": 3}, False),
    ("profile.tier in [1, 2]", {"profile__tier": 2.0}, True),
    ("profile.tier not in [1, 2]", {"profile__tier": 3}, True),
    ("profile.tier not in [1, 2]", {"profile__tier": 1}, False),
    ("profile.tier in [-1, 0]", {"profile__tier": -1}, True),
    ("profile.tier in (3,)", {"profile__tier": 3}, True),
    ("profile.tier in {3, 4}", {"profile__tier": 4}, True),
    ("profile.tier + 1 in [3]", {"profile__tier": 2}, True),
    ('profile.country in ["FR", "BE"]', {"profile__country": "BE"}, True),
    ('profile.country in ["FR", "BE"]', {"profile__country": "DE"}, False),
    ('profile.country not in ("FR", "BE")', {"profile__country": "DE"}, True),
    ('profile.country not in ("FR", "BE")', {"profile__country": "FR"}, False),
    ('profile.country in [""]', {"profile__country": ""}, True),
    ("profile.vip in [true]", {"profile__vip": True}, True),
    ("profile.vip in [True, false]", {"profile__vip": False}, True),
    ("profile.vip not in [true]", {"profile__vip": False}, True),
    ('not profile.country in ["FR"]', {"profile__country": "FR"}, False),
    # in inside a chain: (1 < tier) and (tier in [2, 3])
    ("1 < profile.tier in [2, 3]", {"profile__tier": 2}, True),
    ("1 < profile.tier in [2, 3]", {"profile__tier": 4}, False),
]

CHAIN_CASES = [
    ("1 <= profile.tier < 3", {"profile__tier": 0}, False),
    ("1 <= profile.tier < 3", {"profile__tier": 1}, True),
    ("1 <= profile.tier < 3", {"profile__tier": 2}, True),
    ("1 <= profile.tier < 3", {"profile__tier": 2.999}, True),
    ("1 <= profile.tier < 3", {"profile__tier": 3}, False),
    ("1 <= profile.tier < 3", {}, False),
    ("3 > profile.tier >= 1", {"profile__tier": 1}, True),
    ("0 < profile.tier < context.basket <= 10", {"profile__tier": 1, "context__basket": 10},
     True),
    ("0 < profile.tier < context.basket <= 10", {"profile__tier": 1, "context__basket": 11},
     False),
    ("0 < profile.tier < context.basket <= 10", {"profile__tier": 5, "context__basket": 5},
     False),
    ("1 == profile.tier == 1.0", {"profile__tier": 1}, True),
    ("1 != profile.tier != 1", {"profile__tier": 2}, True),
    ('"FR" == profile.country != "BE"', {"profile__country": "FR"}, True),
    ("1 < 2 < 3", {}, True),
    ("3 > 2 > 2", {}, False),
]

MISSING_CASES = [
    # a missing value is unequal to everything, fails every other comparison, is false
    ("profile.tier > 0", {}, False),
    ("profile.tier <= 0", {}, False),
    ("profile.tier >= 0", {}, False),
    ("profile.tier < 0", {}, False),
    ("profile.tier == 0", {}, False),
    ("profile.tier != 0", {}, True),
    ("profile.tier == profile.tier", {}, False),
    ("profile.tier != profile.tier", {}, True),
    ("profile.tier in [0, 1]", {}, False),
    ("profile.tier not in [0, 1]", {}, True),
    ("profile.tier + 1 >= 1", {}, False),
    ("profile.tier * 0 == 0", {}, False),
    ("profile.vip", {}, False),
    ("profile.vip == false", {}, False),
    ("not profile.vip", {}, True),                                   # not (false)
    ("profile.vip or profile.tier > 1", {"profile__tier": 2}, True),
    ("profile.vip and true", {}, False),
    ('profile.country == "FR"', {}, False),
    ('profile.country != "FR"', {}, True),
    ('profile.country in ["FR"]', {}, False),
    ('context.device == "web"', {"profile__country": "web"}, False),  # other namespace
    ("context.basket > 0", {"profile__tier": 5}, False),
]


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    NUMBER_CASES + DIVISION_CASES + STRING_CASES + BOOL_CASES + MEMBERSHIP_CASES + CHAIN_CASES
    + MISSING_CASES,
)
def test_rule_evaluates_as_written(rule, values, expected):
    assert evaluate(rule, **values) is expected


@pytest.mark.parametrize("rule", ["", "   ", "\t\n"])
def test_empty_rule_is_an_empty_program_and_always_eligible(rule):
    builder = ProgramBuilder(FIELDS)
    builder.add("profile.vip")
    before = len(builder.code), len(builder.consts)
    start, end = builder.add(rule)
    assert start == end == before[0]
    assert (len(builder.code), len(builder.consts)) == before
    assert evaluate(rule) is True
    assert evaluate(rule, profile__vip=False) is True


def test_surrounding_whitespace_is_ignored():
    assert evaluate("  profile.tier > 1  ", profile__tier=2) is True


def test_programs_of_several_rules_share_one_code_array():
    builder = ProgramBuilder(FIELDS)
    rules = ['profile.country == "FR"', "", "context.basket > 10", "profile.tier in [1, 2]"]
    bounds = [builder.add(r) for r in rules]
    assert bounds[0][0] == 0
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert start == end
    assert bounds[1][0] == bounds[1][1]
    code, consts = builder.arrays()
    assert code.dtype == np.int32 and code.shape == (bounds[-1][1], 3)
    assert code.flags.c_contiguous and consts.dtype == np.float64
    assert builder.used == {FIELDS.get("profile", "country"), FIELDS.get("context", "basket"),
                            FIELDS.get("profile", "tier")}
    programs = np.array(bounds, dtype=np.int32).reshape(-1, 2)
    n = len(rules)
    slots = slots_of({"profile.country": "FR", "context.basket": 5, "profile.tier": 2})
    got = eligible_mask(code, programs, consts, slots, np.ones((n, 2), dtype=np.int64),
                        np.tile([-np.inf, np.inf], (n, 1)), 1, 0, 0.0)
    assert got.tolist() == [True, True, False, True]


def test_string_ids_are_exact_float64_integers():
    for text in ["", "FR", "web", "a much longer string value", "Zürich"]:
        sid = string_id(text)
        assert isinstance(sid, float)
        assert sid == int(sid) and 0 <= sid < 2 ** 52
        assert string_id(text) == sid
    assert string_id("FR") != string_id("fr")


def nested_sum(ones: int) -> str:
    """``(1 + (1 + (... + 1)))``: every ``1`` is on the stack before the first add."""
    text = "1"
    for _ in range(ones - 1):
        text = f"(1 + {text})"
    return text


def test_deepest_allowed_rule_compiles_and_evaluates():
    rule = f"{nested_sum(MAX_STACK)} == {MAX_STACK}"
    assert evaluate(rule) is True
    assert evaluate(f"{nested_sum(MAX_STACK)} == {MAX_STACK - 1}") is False


def test_long_flat_rules_are_not_deep():
    """Width is not depth: a long and-chain or sum needs a stack of 2."""
    assert evaluate(" and ".join(["profile.vip"] * 200), profile__vip=True) is True
    assert evaluate(" + ".join(["1"] * 200) + " == 200") is True
    assert evaluate(" or ".join([f"profile.tier == {i}" for i in range(100)]),
                    profile__tier=99) is True


# ------------------------------------------------------------- rejected rules
def reject(rule: str, *fragments: str, fields: FieldTable = FIELDS) -> str:
    builder = ProgramBuilder(fields)
    builder.add("profile.vip")
    code_before = list(builder.code)
    with pytest.raises(RuleError) as info:
        builder.add(rule)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert builder.code == code_before, "a rejected rule must leave no code behind"
    assert builder.add("profile.tier > 1") == (len(code_before), len(code_before) + 1)  # fused
    return message


def test_rule_error_is_a_catalog_error():
    assert issubclass(RuleError, CatalogError)
    assert RuleError("x").status == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("rule", "name", "known"), [
    ("profile.age > 3", "profile.age", "known: tier, country, vip"),
    ("context.country == 'FR'", "context.country", "known: device, basket"),
    ("profile.vip and context.Device == 'web'", "context.Device", "known: device, basket"),
    ("profile.tier in [1] and profile.tierr > 1", "profile.tierr", "known: tier, country, vip"),
])
def test_unknown_field(rule, name, known):
    message = reject(rule, f"unknown field '{name}'", known)
    assert message.startswith(f"rule `{rule}`")


def test_unknown_field_without_declared_fields():
    fields = FieldTable(profile={"vip": "bool", "tier": "number"}, context={})
    reject("context.device == 'web'", "unknown field 'context.device'", "known: none declared",
           fields=fields)


@pytest.mark.parametrize("rule", [
    "profile.tier >", "profile.tier = 1", "profile.tier > 1)", "(profile.tier > 1",
    "profile.tier > 1 and", "profile.tier > 1; true", "profile.tier === 1", "'FR",
    "profile.tier > 1\n> 2", "x := true", "profile.vip &&& true",
])
def test_syntax_error(rule):
    reject(rule, "syntax error", f"rule `{rule}`")


@pytest.mark.parametrize(("rule", "fragment"), [
    ('profile.country == 1', "cannot compare string with number using =="),
    ('1 != profile.country', "cannot compare number with string using !="),
    ('profile.tier == "1"', "cannot compare number with string"),
    ("profile.vip == 1", "cannot compare bool with number"),
    ('profile.vip == "true"', "cannot compare bool with string"),
    ("context.device == profile.tier", "cannot compare string with number"),
    ('profile.country < "FR"', "< compares numbers, not strings"),
    ('profile.country >= context.device', ">= compares numbers, not strings"),
    ("profile.vip > false", "> compares numbers, not bools"),
    ('1 < profile.tier < "3"', "cannot compare number with string"),
    ("profile.tier and profile.vip", "operands of and/or must be bool, got number"),
    ("profile.vip or profile.country", "operands of and/or must be bool, got string"),
    ("not profile.tier", "the operand of not must be bool, got number"),
    ("-profile.vip == 1", "the operand of unary - must be number, got bool"),
    ("profile.tier + true > 1", "operands of + must be number, got bool"),
    ('profile.country + "x" == "FRx"', "operands of + must be number, got string"),
    ('profile.tier in ["1"]', "list after 'in' holds a string, expected number"),
    ("profile.country in [1, 2]", "list after 'in' holds a number, expected string"),
    ("profile.tier in [1, true]", "list after 'in' holds a bool, expected number"),
    ("profile.tier in [profile.tier]", "the list after 'in' may hold only literals"),
    ("profile.tier in [1 + 1]", "the list after 'in' may hold only literals"),
])
def test_type_error(rule, fragment):
    reject(rule, fragment)


@pytest.mark.parametrize(("rule", "kind"), [
    ("profile.tier", "number"),
    ("profile.tier + 1", "number"),
    ("1", "number"),
    ('"FR"', "string"),
    ("profile.country", "string"),
])
def test_rule_must_be_a_bool(rule, kind):
    reject(rule, f"must be true or false, but is a {kind}")


@pytest.mark.parametrize(("rule", "fragment"), [
    ("len(profile.country) > 1", "unsupported expression (Call)"),
    ("profile.country.upper() == 'FR'", "unsupported expression (Call)"),
    ("__import__('os').system('true')", "unsupported expression (Call)"),
    ("lambda: true", "unsupported expression (Lambda)"),
    ("(lambda: true)()", "unsupported expression (Call)"),
    ("profile['tier'] > 1", "unsupported expression (Subscript)"),
    ("profile.tier[0] > 1", "unsupported expression (Subscript)"),
    ("profile.vip if true else false", "unsupported expression (IfExp)"),
    ("[true][0]", "unsupported expression (Subscript)"),
    ("profile.a.b", "fields are written profile.<name>, context.<name>, "),
    ("profile.country.upper == 'FR'", "fields are written profile.<name>, context.<name>, "),
    ("profile.tier ** 2 > 1", "unsupported operator"),
    ("profile.tier % 2 == 1", "unsupported operator"),
    ("profile.tier // 2 == 1", "unsupported operator"),
    ("~profile.tier > 1", "unsupported unary operator"),
    ("+profile.tier > 1", "unsupported unary operator"),
    ("profile.vip is true", "unsupported comparison"),
    ("profile.vip is not true", "unsupported comparison"),
    ("profile.vip == None", "unsupported literal None"),
    ("profile.tier == 1j", "unsupported literal 1j"),
    ("profile.country == b'FR'", "unsupported literal b'FR'"),
    ("f'{profile.tier}' == '1'", "unsupported expression (JoinedStr)"),
    ("[1] == [1]", "unsupported expression (List)"),
])
def test_unsupported_construct(rule, fragment):
    reject(rule, fragment)


@pytest.mark.parametrize(("rule", "fragment"), [
    ("user.tier > 1", "fields are written profile.<name>, context.<name>, "),
    ("request.device == 'web'", "fields are written profile.<name>, context.<name>, "),
    ("Profile.tier > 1", "fields are written profile.<name>, context.<name>, "),
    ("tier > 1", "unknown name 'tier'"),
    ("null", "unknown name 'null'"),
    ("TRUE", "unknown name 'TRUE'"),
    ("profile", "unknown name 'profile'"),
    ("profile.vip and context", "unknown name 'context'"),
])
def test_names_other_than_profile_and_context(rule, fragment):
    reject(rule, fragment)


def test_too_deeply_nested():
    rule = f"{nested_sum(MAX_STACK + 1)} == {MAX_STACK + 1}"
    reject(rule, "too deeply nested", f"more than {MAX_STACK} operands")
    reject(f"profile.vip and {nested_sum(MAX_STACK + 1)} > 0", "too deeply nested")
    # ``and`` pops its decided operand before the next one runs: it costs no depth
    deepest = f"{nested_sum(MAX_STACK)} == {MAX_STACK}"
    assert evaluate(f"profile.vip and {deepest}", profile__vip=True) is True
    assert evaluate(f"profile.vip and {deepest}", profile__vip=False) is False
    assert evaluate(f"profile.vip or {deepest}") is True  # missing vip: the sum decides


@pytest.mark.parametrize("rule", [
    "profile.tier in []", "profile.tier not in []", "profile.tier in ()",
    'profile.country in []', "profile.tier in profile.tier", "profile.tier in 1",
])
def test_in_needs_a_non_empty_list(rule):
    reject(rule, "the right side of 'in' must be a non-empty list of literals")


def test_error_messages_name_the_column():
    message = reject("profile.vip and profile.nope", "unknown field 'profile.nope'")
    assert "at column 17" in message
    message = reject('profile.tier > 1 and profile.country < "FR"', "compares numbers")
    assert "at column 22" in message


# ----------------------------------------------------------------- field table
@pytest.mark.parametrize(("profile", "context", "fragment"), [
    ({"tier": "int"}, {}, "profile.tier: type must be one of number, string, bool, got 'int'"),
    ({}, {"when": "date"}, "context.when: type must be one of number, string, bool"),
    ({"vip": "Bool"}, {}, "got 'Bool'"),
    ({"vip": None}, {}, "got None"),
    ({"tier": "number"}, {"device": "str"}, "context.device"),
])
def test_unknown_field_type(profile, context, fragment):
    with pytest.raises(RuleError) as info:
        FieldTable(profile=profile, context=context)
    assert fragment in str(info.value)


def test_field_table_slots():
    assert FIELDS.size == 5
    assert [f.slot for f in FIELDS.of("profile")] == [0, 1, 2]
    assert [f.slot for f in FIELDS.of("context")] == [3, 4]
    assert FIELDS.names("context") == ["device", "basket"]
    assert FIELDS.get("profile", "device") is None
    assert FIELDS.get("context", "device").type == "string"


# ------------------------------------------------------ robustness (bugs found)
@pytest.mark.parametrize("rule", [
    "profile.tier < 1" + "0" * 400,                # an int literal too large for float64
    "profile.tier in [1" + "0" * 400 + "]",
    "profile.tier > -1" + "0" * 400,
])
def test_huge_integer_literal_is_a_rule_error_or_inf(rule):
    """A literal beyond float64 must not escape as OverflowError from the compiler."""
    builder = ProgramBuilder(FIELDS)
    try:
        builder.add(rule)
    except RuleError:
        pass


@pytest.mark.parametrize("rule", [
    "not " * 600 + "profile.vip",
    "-" * 600 + "profile.tier > 0",
])
def test_deep_unary_nesting_is_a_rule_error_not_a_crash(rule):
    """Nesting that needs one stack slot but hundreds of AST levels: a RuleError (or a
    program), never RecursionError out of the compiler."""
    builder = ProgramBuilder(FIELDS)
    try:
        builder.add(rule)
    except RuleError:
        pass
