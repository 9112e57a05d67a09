"""Eligibility: which offers may be shown to this customer, here, now.

An offer is eligible when all hold:
- its channel bitmask has the request's channel bit;
- its placement bitmask is 0 (any placement) or has the request's placement bit
  (a request without a placement passes ``placement_bit = 0``: any offer passes);
- ``valid_from <= now < valid_until`` (epoch seconds);
- its rule program evaluates truthy over the request's slot vector.

Rule programs
-------------
Every offer's rule is a postfix program in one shared ``code`` array of shape
``(n_instructions, 3)`` int32 rows ``(opcode, a, b)``; offer ``i`` runs rows
``programs[i, 0]:programs[i, 1]`` (an empty range means "no rule": eligible). Offers
with the same rule text share one program, and a request evaluates each program at
most once (``memo``, keyed by the program's first row; the decide kernels number the
distinct programs, ``distinct_programs``): catalogs repeat conditions ("tier >= 2", a
segment) across many offers. ``run_programs`` evaluates every program for many slot
vectors at once (a batch of customers), one instruction at a time for all of them.
Operands are float64 on a fixed stack of ``MAX_STACK`` entries; the compiler
(``decision.config.rules``) proves the depth bound and the types at catalog load, so the
kernel does no checking. Values:

- numbers as themselves; booleans as 1.0 / 0.0; strings as a 52-bit integer id
  (exact in float64) given by ``decision.config.rules.string_id``;
- a missing field is NaN: every comparison with NaN is false except ``!=``, which is
  true (a missing value equals nothing), and NaN is falsy.

Opcodes (``a``, ``b`` are the row's operands):

=========== ======================================================================
PUSH_SLOT   push ``slots[a]``
PUSH_CONST  push ``consts[a]``
EQ .. GE    pop y, pop x, push (x op y)
AND, OR     pop y, pop x, push truthy(x) and/or truthy(y)
NOT         pop x, push not truthy(x)
ADD .. DIV  pop y, pop x, push x op y (IEEE: x / 0 is +-inf or NaN)
NEG         pop x, push -x
IN_SET      pop x, push x in ``consts[a:a + b]``
SC_EQ..     push (``slots[a]`` op ``consts[b]``): the compiler's fusion of
 SC_GE      PUSH_SLOT a, PUSH_CONST b, EQ..GE (most conditions: one row, not three)
JUMP_FALSE  if the top is falsy, make it 0 and go to row ``a``; else pop it
JUMP_TRUE   if the top is truthy, make it 1 and go to row ``a``; else pop it
BOOL        make the top 1 if truthy, else 0
=========== ======================================================================

``and`` and ``or`` compile to the jumps: ``a and b and c`` is
``a JUMP_FALSE(end) b JUMP_FALSE(end) c BOOL``, so a rule stops at its first false
condition (``AND`` and ``OR`` remain for chained comparisons such as ``1 <= x < 3``).
Jump targets are absolute rows of ``code`` and never point backwards: a program
always ends.

Cost: O(instructions of the distinct programs reached) per request.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PUSH_SLOT = 0
PUSH_CONST = 1
EQ = 2
NE = 3
LT = 4
LE = 5
GT = 6
GE = 7
AND = 8
OR = 9
NOT = 10
ADD = 11
SUB = 12
MUL = 13
DIV = 14
NEG = 15
IN_SET = 16
SC_EQ = 17  # SC_EQ + (EQ..GE - EQ): slot-vs-constant comparisons, fused
SC_NE = 18
SC_LT = 19
SC_LE = 20
SC_GT = 21
SC_GE = 22
JUMP_FALSE = 23
JUMP_TRUE = 24
BOOL = 25

MAX_STACK = 32

BINARY_COMPARE = {"==": EQ, "!=": NE, "<": LT, "<=": LE, ">": GT, ">=": GE}
BINARY_ARITH = {"+": ADD, "-": SUB, "*": MUL, "/": DIV}


@njit(cache=True, nogil=True, error_model="numpy")
def _truthy(x):
    return x == x and x != 0.0  # NaN (missing) is falsy


@njit(cache=True, nogil=True, error_model="numpy")
def run_program(code, start, end, consts, slots, stack):
    """Evaluate rows ``code[start:end]``; return the rule's truth value."""
    if start == end:
        return True
    sp = 0
    pc = start
    while pc < end:
        op = code[pc, 0]
        a = code[pc, 1]
        pc += 1
        if op >= SC_EQ:
            if op <= SC_GE:
                x = slots[a]
                y = consts[code[pc - 1, 2]]
                if op == SC_EQ:
                    r = 1.0 if x == y else 0.0
                elif op == SC_NE:
                    r = 1.0 if x != y else 0.0
                elif op == SC_LT:
                    r = 1.0 if x < y else 0.0
                elif op == SC_LE:
                    r = 1.0 if x <= y else 0.0
                elif op == SC_GT:
                    r = 1.0 if x > y else 0.0
                else:
                    r = 1.0 if x >= y else 0.0
                stack[sp] = r
                sp += 1
            elif op == BOOL:
                stack[sp - 1] = 1.0 if _truthy(stack[sp - 1]) else 0.0
            elif _truthy(stack[sp - 1]) == (op == JUMP_TRUE):  # decided: skip the rest
                stack[sp - 1] = 1.0 if op == JUMP_TRUE else 0.0
                pc = a
            else:
                sp -= 1
        elif op == PUSH_SLOT:
            stack[sp] = slots[a]
            sp += 1
        elif op == PUSH_CONST:
            stack[sp] = consts[a]
            sp += 1
        elif op == NOT:
            stack[sp - 1] = 0.0 if _truthy(stack[sp - 1]) else 1.0
        elif op == NEG:
            stack[sp - 1] = -stack[sp - 1]
        elif op == IN_SET:
            x = stack[sp - 1]
            hit = 0.0
            for j in range(a, a + code[pc - 1, 2]):
                if consts[j] == x:
                    hit = 1.0
                    break
            stack[sp - 1] = hit
        else:
            sp -= 1
            y = stack[sp]
            x = stack[sp - 1]
            if op == EQ:
                r = 1.0 if x == y else 0.0
            elif op == NE:
                r = 1.0 if x != y else 0.0
            elif op == LT:
                r = 1.0 if x < y else 0.0
            elif op == LE:
                r = 1.0 if x <= y else 0.0
            elif op == GT:
                r = 1.0 if x > y else 0.0
            elif op == GE:
                r = 1.0 if x >= y else 0.0
            elif op == AND:
                r = 1.0 if _truthy(x) and _truthy(y) else 0.0
            elif op == OR:
                r = 1.0 if _truthy(x) or _truthy(y) else 0.0
            elif op == ADD:
                r = x + y
            elif op == SUB:
                r = x - y
            elif op == MUL:
                r = x * y
            else:  # DIV
                r = x / y
            stack[sp - 1] = r
    return _truthy(stack[0])


def distinct_programs(programs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids for the distinct programs of ``programs`` (int32[n, 2], row ranges of
    ``code``): (program int32[n], -1 where the offer has no rule; rules int32[P, 2],
    the row range of program p). Offers with the same rule text share one program, so
    a per-request verdict array indexed by id is P entries, not one per offer."""
    program = np.full(programs.shape[0], -1, dtype=np.int32)
    first: dict[int, int] = {}
    rules = []
    for i, (start, end) in enumerate(programs.tolist()):
        if start != end:
            program[i] = first.setdefault(start, len(rules))
            if program[i] == len(rules):
                rules.append((start, end))
    return program, np.array(rules, dtype=np.int32).reshape(-1, 2)


def programs_reading(code: np.ndarray, rules: np.ndarray, slots) -> np.ndarray:
    """bool[P]: True where program p (rows ``rules[p]`` of ``code``) reads one of
    ``slots`` (a set of slot indices)."""
    reads = np.zeros(rules.shape[0], dtype=bool)
    for p, (start, end) in enumerate(rules.tolist()):
        reads[p] = any((op == PUSH_SLOT or SC_EQ <= op <= SC_GE) and a in slots
                       for op, a, _ in code[start:end].tolist())
    return reads


@njit(cache=True, nogil=True, error_model="numpy")
def _compare(op, x, y):
    """(x op y) as 1.0 / 0.0 for op in EQ..GE (NaN compares false but for !=)."""
    if op == EQ:
        return 1.0 if x == y else 0.0
    if op == NE:
        return 1.0 if x != y else 0.0
    if op == LT:
        return 1.0 if x < y else 0.0
    if op == LE:
        return 1.0 if x <= y else 0.0
    if op == GT:
        return 1.0 if x > y else 0.0
    return 1.0 if x >= y else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def run_programs(code, consts, lanes, rules, out):
    """Evaluate every program of ``rules`` (int32[P, 2]) for many slot vectors at once:
    ``lanes`` float64[s, m] holds slot vector c in column c; out int8[m, P] gets 1
    where program p holds for column c, else 0.

    The same instructions as ``run_program``, each applied to all m columns in one
    loop (one dispatch per instruction, not per customer). A jump cannot be taken by
    some columns only in a shared loop, so the columns it decides wait instead:
    ``resume[c]`` is the row column c continues at, and an instruction applies to the
    columns whose resume row is at or before it. The compiler leaves the stack at
    the same depth on both sides of a jump (each sub-expression nets one value), so
    the depth is one number for all columns.

    Each opcode's arithmetic is written out again rather than shared with
    ``run_program`` through helper functions: calling (or numba-inlining) them made
    the single-customer VM ~9% slower (4.9 -> 5.3 us over the demo catalog's
    programs), and inlining ``_compare`` here made this one ~35% slower. The tests
    compare this VM with the reference on random programs, and the batch kernels
    (this VM) with ``decide_offers`` (``run_program``)."""
    m = lanes.shape[1]
    stack = np.empty((MAX_STACK, m), dtype=np.float64)
    resume = np.empty(m, dtype=np.int32)
    for p in range(rules.shape[0]):
        start = rules[p, 0]
        end = rules[p, 1]
        resume[:] = start
        sp = 0
        for pc in range(start, end):
            op = code[pc, 0]
            a = code[pc, 1]
            b = code[pc, 2]
            if SC_EQ <= op <= SC_GE:
                y = consts[b]
                row = lanes[a]
                top = stack[sp]
                for c in range(m):
                    if resume[c] <= pc:
                        top[c] = _compare(op - SC_EQ + EQ, row[c], y)
                sp += 1
            elif op == PUSH_SLOT:
                row = lanes[a]
                top = stack[sp]
                for c in range(m):
                    if resume[c] <= pc:
                        top[c] = row[c]
                sp += 1
            elif op == PUSH_CONST:
                y = consts[a]
                top = stack[sp]
                for c in range(m):
                    if resume[c] <= pc:
                        top[c] = y
                sp += 1
            elif op == JUMP_FALSE or op == JUMP_TRUE:
                top = stack[sp - 1]
                taken = op == JUMP_TRUE
                for c in range(m):
                    if resume[c] <= pc and _truthy(top[c]) == taken:
                        top[c] = 1.0 if taken else 0.0
                        resume[c] = a
                sp -= 1  # the columns that go on popped it
            elif op == BOOL or op == NOT:
                top = stack[sp - 1]
                yes = 1.0 if op == BOOL else 0.0
                for c in range(m):
                    if resume[c] <= pc:
                        top[c] = yes if _truthy(top[c]) else 1.0 - yes
            elif op == NEG:
                top = stack[sp - 1]
                for c in range(m):
                    if resume[c] <= pc:
                        top[c] = -top[c]
            elif op == IN_SET:
                top = stack[sp - 1]
                for c in range(m):
                    if resume[c] <= pc:
                        hit = 0.0
                        for j in range(a, a + b):
                            if consts[j] == top[c]:
                                hit = 1.0
                                break
                        top[c] = hit
            else:
                sp -= 1
                ys = stack[sp]
                xs = stack[sp - 1]
                for c in range(m):
                    if resume[c] <= pc:
                        x = xs[c]
                        y = ys[c]
                        if op <= GE:
                            r = _compare(op, x, y)
                        elif op == AND:
                            r = 1.0 if _truthy(x) and _truthy(y) else 0.0
                        elif op == OR:
                            r = 1.0 if _truthy(x) or _truthy(y) else 0.0
                        elif op == ADD:
                            r = x + y
                        elif op == SUB:
                            r = x - y
                        elif op == MUL:
                            r = x * y
                        else:  # DIV
                            r = x / y
                        xs[c] = r
        bottom = stack[0]
        for c in range(m):
            out[c, p] = 1 if _truthy(bottom[c]) else 0


@njit(cache=True, nogil=True, error_model="numpy")
def in_scope(channels, placements, valid_from, valid_until, channel_bit, placement_bit, now):
    """Channel, placement and validity checks of one offer (scalars only: a call
    with array arguments per offer would cost more than the checks themselves)."""
    if channels & channel_bit == 0:
        return False
    if placement_bit != 0 and placements != 0 and placements & placement_bit == 0:
        return False
    return valid_from <= now < valid_until


@njit(cache=True, nogil=True, error_model="numpy")
def new_memo(code):
    """Per-request memo of program results: -1 unknown, 0 false, 1 true."""
    return np.full(code.shape[0] + 1, -1, dtype=np.int8)


@njit(cache=True, nogil=True, error_model="numpy")
def eligible_mask(code, programs, consts, slots, offer_masks, offer_window,
                  channel_bit, placement_bit, now):
    """Boolean mask over offers: True where the offer is eligible.

    code:         int32[m, 3]   rule programs of all offers
    programs:     int32[n, 2]   (first row, end row) of each offer's program
    consts:       float64[c]    constants the programs reference
    slots:        float64[s]    this request's field values (NaN = missing)
    offer_masks:  int64[n, 2]   (channel bitmask, placement bitmask; 0 = any)
    offer_window: float64[n, 2] (valid_from, valid_until), epoch seconds
    channel_bit, placement_bit: int64 single bits (placement_bit 0 = no placement)
    now:          float64 epoch seconds
    """
    n = programs.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    stack = np.empty(MAX_STACK, dtype=np.float64)
    memo = new_memo(code)
    for i in range(n):
        if not in_scope(offer_masks[i, 0], offer_masks[i, 1], offer_window[i, 0],
                        offer_window[i, 1], channel_bit, placement_bit, now):
            continue
        start = programs[i, 0]
        if start != programs[i, 1]:
            if memo[start] < 0:
                memo[start] = run_program(code, start, programs[i, 1], consts, slots, stack)
            if memo[start] == 0:
                continue
        out[i] = True
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def eligible_rows(code, programs, consts, slots, offer_masks, offer_window, channel_bit,
                  placement_bit, now):
    """``eligible_mask`` for every row of ``slots`` (float64[m, s]): bool[m, n]
    (segment membership of many profiles in one call)."""
    m = slots.shape[0]
    out = np.zeros((m, programs.shape[0]), dtype=np.bool_)
    for r in range(m):
        out[r] = eligible_mask(code, programs, consts, slots[r], offer_masks, offer_window,
                               channel_bit, placement_bit, now)
    return out


# --------------------------------------------------------------------- reference
def eligible_mask_reference(code, programs, consts, slots, offer_masks, offer_window,
                            channel_bit, placement_bit, now):
    """Plain NumPy/Python reference of ``eligible_mask``, written independently
    (no memo: every offer runs its program)."""
    n = len(programs)
    ops = {
        EQ: lambda x, y: x == y, NE: lambda x, y: x != y, LT: lambda x, y: x < y,
        LE: lambda x, y: x <= y, GT: lambda x, y: x > y, GE: lambda x, y: x >= y,
        ADD: lambda x, y: x + y, SUB: lambda x, y: x - y, MUL: lambda x, y: x * y,
    }

    def truthy(v):
        return not np.isnan(v) and v != 0

    def div(x, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(x) / np.float64(y))

    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if not offer_masks[i, 0] & channel_bit:
            continue
        if placement_bit and offer_masks[i, 1] and not offer_masks[i, 1] & placement_bit:
            continue
        if not offer_window[i, 0] <= now < offer_window[i, 1]:
            continue
        stack: list[float] = []
        pc, end = int(programs[i, 0]), int(programs[i, 1])
        while pc < end:
            op, a, b = (int(v) for v in code[pc])
            pc += 1
            if op == JUMP_FALSE or op == JUMP_TRUE:
                if truthy(stack[-1]) == (op == JUMP_TRUE):  # decided: skip the rest
                    stack[-1] = 1.0 if op == JUMP_TRUE else 0.0
                    pc = a
                else:
                    stack.pop()
            elif op == BOOL:
                stack.append(1.0 if truthy(stack.pop()) else 0.0)
            elif op >= SC_EQ:  # PUSH_SLOT a, PUSH_CONST b, EQ + (op - SC_EQ)
                stack.append(float(ops[EQ + op - SC_EQ](float(slots[a]), float(consts[b]))))
            elif op == PUSH_SLOT:
                stack.append(float(slots[a]))
            elif op == PUSH_CONST:
                stack.append(float(consts[a]))
            elif op == NOT:
                stack.append(0.0 if truthy(stack.pop()) else 1.0)
            elif op == NEG:
                stack.append(-stack.pop())
            elif op == IN_SET:
                x = stack.pop()
                stack.append(1.0 if x in set(consts[a:a + b].tolist()) else 0.0)
            else:
                y, x = stack.pop(), stack.pop()
                if op == AND:
                    stack.append(float(truthy(x) and truthy(y)))
                elif op == OR:
                    stack.append(float(truthy(x) or truthy(y)))
                elif op == DIV:
                    stack.append(div(x, y))
                else:
                    stack.append(float(ops[op](x, y)))
        out[i] = truthy(stack[0]) if stack else True
    return out
