"""Eligibility rules: parse, type-check and compile expressions into kernel programs.

The language is a small, safe subset of Python expression syntax::

    profile.tier >= 2 and context.country == "FR"
    profile.country in ["FR", "BE"] and not profile.vip
    profile.lifetime_value / (profile.orders + 1) > 50
    1 <= profile.tier < 3

- fields: ``profile.<attribute>`` and ``context.<key>``, declared with a type in the
  catalog's schema (``number``, ``string`` or ``bool``), ``counter.<name>`` (numbers,
  declared in ``[profile] counters``; 0 when the profile has none yet) and
  ``segment.<name>`` (true when the profile is in the segment); an undeclared field is
  an error at load time, never at request time;
- literals: numbers, "strings", ``true``/``false`` (or ``True``/``False``);
- operators: ``and or not``, ``== != < <= > >=`` (chains allowed), ``in`` and
  ``not in`` a list of literals, ``+ - * /`` and unary ``-`` on numbers;
- a missing value (the profile or the request lacks the field) is unequal to
  everything, fails every other comparison, and is false.

Rules are type-checked (a rule must be a bool; ``<`` only between numbers; ``==``
between values of one type) and compiled once, at catalog load, into postfix rows for
``kernels.eligibility`` (see the opcode table there). Strings become 52-bit integer
ids through ``string_id``, the same function the engine applies to request values.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Literal

import numpy as np

from decision.errors import RuleError
from kernels import eligibility as vm

FieldType = Literal["number", "string", "bool"]
FIELD_TYPES: tuple[FieldType, ...] = ("number", "string", "bool")
NAMESPACES = ("profile", "context", "counter", "segment")
_MASK52 = (1 << 52) - 1


def string_id(text: str) -> float:
    """The rule-language id of a string: exact in float64, stable within a process.

    Python's string hash is randomised per process; that is fine because every
    process compiles its own catalog and ids are never stored.
    """
    return float(hash(text) & _MASK52)


@dataclass(frozen=True)
class Field:
    namespace: str  # "profile" or "context"
    name: str
    type: FieldType
    slot: int  # index into the request's slot vector


class FieldTable:
    """The fields rules may read, each with its slot in the per-request vector."""

    def __init__(self, profile: dict[str, FieldType], context: dict[str, FieldType],
                 counters: tuple[str, ...] = (), segments: tuple[str, ...] = ()):
        fields: dict[tuple[str, str], Field] = {}
        for namespace, declared in (("profile", profile), ("context", context),
                                    ("counter", {c: "number" for c in counters}),
                                    ("segment", {s: "bool" for s in segments})):
            for name, ftype in declared.items():
                if ftype not in FIELD_TYPES:
                    raise RuleError(
                        f"{namespace}.{name}: type must be one of {', '.join(FIELD_TYPES)}, "
                        f"got {ftype!r}"
                    )
                fields[(namespace, name)] = Field(namespace, name, ftype, len(fields))
        self._fields = fields

    @property
    def size(self) -> int:
        return len(self._fields)

    def get(self, namespace: str, name: str) -> Field | None:
        return self._fields.get((namespace, name))

    def of(self, namespace: str) -> list[Field]:
        return [f for f in self._fields.values() if f.namespace == namespace]

    def names(self, namespace: str) -> list[str]:
        return [f.name for f in self.of(namespace)]


class ProgramBuilder:
    """Accumulates the programs of many rules into one code and constant array.

    ``namespaces`` are the ones its rules may read (segment rules, evaluated without
    a request, may not read ``context`` nor other segments)."""

    def __init__(self, fields: FieldTable, namespaces: tuple[str, ...] = NAMESPACES):
        self.fields = fields
        self.namespaces = namespaces
        self.code: list[tuple[int, int, int]] = []
        self.consts: list[float] = []
        self.used: set[Field] = set()
        self._compiled: dict[str, tuple[int, int]] = {}

    def add(self, text: str) -> tuple[int, int]:
        """Compile ``text`` and append it; return its (start, end) rows.

        The same text (up to surrounding blanks) returns the same program, so the
        kernels evaluate a condition shared by many offers once per request.
        An empty or blank rule means "always eligible": an empty program.
        Raises RuleError naming the problem (and its column) on a bad rule.
        """
        start = len(self.code)
        if not text.strip():
            return start, start
        if text.strip() in self._compiled:
            return self._compiled[text.strip()]
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset else ""
            raise RuleError(f"rule `{text}`: syntax error{where}: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting
            raise RuleError(f"rule `{text}`: not a valid expression (too complex or "
                            "contains a NUL byte)") from None
        compiler = _Compiler(self, text)
        try:
            result_type = compiler.emit(tree.body)
        except RecursionError:
            del self.code[start:]
            raise RuleError(f"rule `{text}`: too deeply nested") from None
        except RuleError:
            del self.code[start:]
            raise
        if result_type != "bool":
            del self.code[start:]
            raise RuleError(f"rule `{text}`: must be true or false, but is a {result_type}")
        self.used |= compiler.used
        self._compiled[text.strip()] = (start, len(self.code))
        return start, len(self.code)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        code = np.asarray(self.code, dtype=np.int32).reshape(-1, 3)
        consts = np.asarray(self.consts, dtype=np.float64)
        return np.ascontiguousarray(code), consts


_YIELDS_BOOL = {vm.EQ, vm.NE, vm.LT, vm.LE, vm.GT, vm.GE, vm.AND, vm.OR, vm.NOT, vm.IN_SET,
                vm.BOOL, vm.SC_EQ, vm.SC_NE, vm.SC_LT, vm.SC_LE, vm.SC_GT, vm.SC_GE}


class _Compiler:
    """One rule's walk: emits postfix rows and returns each node's type."""

    def __init__(self, builder: ProgramBuilder, text: str):
        self.b = builder
        self.text = text
        self.depth = 0
        self.used: set[Field] = set()

    # -- helpers
    def fail(self, node: ast.AST, reason: str) -> RuleError:
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        return RuleError(f"rule `{self.text}`{where}: {reason}")

    def push(self, op: int, a: int = 0, b: int = 0, delta: int = 1, node=None) -> None:
        self.depth += delta
        if self.depth > vm.MAX_STACK:
            raise self.fail(node, f"too deeply nested (more than {vm.MAX_STACK} operands)")
        self.b.code.append((op, a, b))

    def const(self, value: float) -> int:
        self.b.consts.append(float(value))
        return len(self.b.consts) - 1

    def literal(self, node: ast.AST) -> tuple[FieldType, float] | None:
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return "bool", float(v)
            if isinstance(v, (int, float)):
                return "number", self.number(node, v)
            if isinstance(v, str):
                return "string", string_id(v)
            raise self.fail(node, f"unsupported literal {v!r}")
        if isinstance(node, ast.Name) and node.id in ("true", "false"):
            return "bool", 1.0 if node.id == "true" else 0.0
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant)
                and isinstance(node.operand.value, (int, float))
                and not isinstance(node.operand.value, bool)):
            return "number", -self.number(node, node.operand.value)
        return None

    def number(self, node: ast.AST, v: int | float) -> float:
        try:
            return float(v)
        except OverflowError:
            raise self.fail(node, f"number {str(v)[:20]}... is too large") from None

    # -- the walk
    def emit(self, node: ast.AST) -> FieldType:
        lit = self.literal(node)
        if lit is not None:
            self.push(vm.PUSH_CONST, self.const(lit[1]), node=node)
            return lit[0]
        if isinstance(node, ast.Attribute):
            return self.emit_field(node)
        if isinstance(node, ast.BoolOp):
            return self.emit_bool_op(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.expect(node.operand, "bool", "the operand of not")
                self.push(vm.NOT, delta=0)
                return "bool"
            if isinstance(node.op, ast.USub):
                self.expect(node.operand, "number", "the operand of unary -")
                self.push(vm.NEG, delta=0)
                return "number"
            raise self.fail(node, "unsupported unary operator")
        if isinstance(node, ast.BinOp):
            symbol = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}.get(type(node.op))
            if symbol is None:
                raise self.fail(node, "unsupported operator (use + - * /)")
            self.expect(node.left, "number", f"operands of {symbol}")
            self.expect(node.right, "number", f"operands of {symbol}")
            self.push(vm.BINARY_ARITH[symbol], delta=-1)
            return "number"
        if isinstance(node, ast.Compare):
            return self.emit_compare(node)
        if isinstance(node, ast.Name):
            raise self.fail(
                node, f"unknown name '{node.id}' (fields are profile.<name>, context.<name>, "
                      "counter.<name> or segment.<name>)"
            )
        raise self.fail(node, f"unsupported expression ({type(node).__name__})")

    def emit_bool_op(self, node: ast.BoolOp) -> FieldType:
        """``a and b and c``: a JUMP_FALSE(end) b JUMP_FALSE(end) c [BOOL], so the
        kernel stops at the first operand that decides (``or``: JUMP_TRUE). The last
        operand is made 0/1 unless it already is (a comparison, say)."""
        jump = vm.JUMP_FALSE if isinstance(node.op, ast.And) else vm.JUMP_TRUE
        jumps = []
        taken_depth = None  # the stack depth a jump arrives with at ``end``
        for i, value in enumerate(node.values):
            if i:
                jumps.append(len(self.b.code))
                taken_depth = self.depth
                self.push(jump, delta=-1)  # on the path that falls through
            self.expect(value, "bool", "operands of and/or")
        if self.b.code[-1][0] not in _YIELDS_BOOL:
            self.push(vm.BOOL, delta=0)
        if taken_depth is not None and taken_depth != self.depth:
            # kernels.eligibility.run_programs (many customers at once) keeps one stack
            # depth for all of them, so both sides of a jump must meet at one depth
            raise AssertionError(f"rule `{self.text}`: a jump lands at depth {taken_depth}, "
                                 f"its fall-through at {self.depth}")
        end = len(self.b.code)
        for row in jumps:
            self.b.code[row] = (jump, end, 0)
        return "bool"

    def expect(self, node: ast.AST, wanted: FieldType, what: str) -> None:
        got = self.emit(node)
        if got != wanted:
            raise self.fail(node, f"{what} must be {wanted}, got {got}")

    def emit_field(self, node: ast.Attribute) -> FieldType:
        if not isinstance(node.value, ast.Name) or node.value.id not in NAMESPACES:
            raise self.fail(node, "fields are written profile.<name>, context.<name>, "
                                  "counter.<name> or segment.<name>")
        namespace, name = node.value.id, node.attr
        if namespace not in self.b.namespaces:
            raise self.fail(node, f"{namespace}.<name> cannot be read here (allowed: "
                                  f"{', '.join(self.b.namespaces)})")
        field = self.b.fields.get(namespace, name)
        if field is None:
            known = ", ".join(self.b.fields.names(namespace)) or "none declared"
            raise self.fail(node, f"unknown field '{namespace}.{name}' (known: {known})")
        self.used.add(field)
        self.push(vm.PUSH_SLOT, field.slot, node=node)
        return field.type

    def emit_compare(self, node: ast.Compare) -> FieldType:
        left = node.left
        for i, (op, right) in enumerate(zip(node.ops, node.comparators)):
            if isinstance(op, (ast.In, ast.NotIn)):
                self.emit_membership(left, right, negate=isinstance(op, ast.NotIn))
            else:
                symbol = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=",
                          ast.Gt: ">", ast.GtE: ">="}.get(type(op))
                if symbol is None:
                    raise self.fail(node, "unsupported comparison (use == != < <= > >= in)")
                before = len(self.b.code)
                lt = self.emit(left)
                middle = len(self.b.code)
                rt = self.emit(right)
                if lt != rt:
                    raise self.fail(node, f"cannot compare {lt} with {rt} using {symbol}")
                if symbol not in ("==", "!=") and lt != "number":
                    raise self.fail(node, f"{symbol} compares numbers, not {lt}s")
                self.push(vm.BINARY_COMPARE[symbol], delta=-1)
                self.fuse(before, middle)
            if i:
                self.push(vm.AND, delta=-1)
            left = right
        return "bool"

    def fuse(self, before: int, middle: int) -> None:
        """A field compared with a literal (rows PUSH_SLOT a, PUSH_CONST b, compare,
        one row per operand) becomes one SC_<compare> (a, b) row: most conditions
        are that. Done as rows are emitted, so jump targets stay right."""
        code = self.b.code
        if (middle - before == 1 and len(code) - middle == 2 and code[before][0] == vm.PUSH_SLOT
                and code[middle][0] == vm.PUSH_CONST):
            op = code[-1][0]
            code[before:] = [(vm.SC_EQ + op - vm.EQ, code[before][1], code[middle][1])]

    def emit_membership(self, left: ast.AST, right: ast.AST, negate: bool) -> None:
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)) or not right.elts:
            raise self.fail(right, "the right side of 'in' must be a non-empty list of literals")
        lt = self.emit(left)
        start = len(self.b.consts)
        for element in right.elts:
            lit = self.literal(element)
            if lit is None:
                raise self.fail(element, "the list after 'in' may hold only literals")
            if lit[0] != lt:
                raise self.fail(element, f"list after 'in' holds a {lit[0]}, expected {lt}")
            self.const(lit[1])
        self.push(vm.IN_SET, start, len(right.elts), delta=0)
        if negate:
            self.push(vm.NOT, delta=0)
