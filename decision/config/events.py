"""Event types: what each kind of customer event does to a profile, from configuration.

Declared in the catalog file, one table per type::

    [events.purchase]
    fields = { amount = "number", sku = "string" }      # the event's typed data
    do = [
      { add = "counter.purchases", value = 1 },
      { add = "counter.revenue", value = "event.amount" },
      { set = "attribute.last_sku", value = "event.sku" },
      { set = "attribute.last_purchase_ms", value = "event.time" },
      { add = "feature.monetary_30d", value = "event.amount", scale = 0.01 },
      { set = "attribute.tier", value = 3 },
    ]

An action is ``set`` or ``add``, on a target:

- ``attribute.<name>``: a profile attribute (its declared type must match the value;
  ``add`` needs a number);
- ``counter.<name>``: a number, 0 when absent, that only ever adds up (event counts,
  monetary totals), so that merging two profiles can add their counters; a value
  that is set, such as a last-seen time (``event.time``), is an attribute;
- ``feature.<name>``: an entry of the profile's float32 feature vector.

A value is a literal (number, string, bool), ``event.<field>`` (a declared field), or
``event.time`` (the event's timestamp, ms). ``scale`` multiplies numeric values
(default 1). Everything is checked when the catalog loads; applying an event is a
short loop over the compiled actions.

``fields`` is the event's data, checked on every event (``Track``, ``TrackStream``):

- a field an action reads (``event.<field>``) is required: an event without it is
  INVALID_ARGUMENT, ``attributes['amount']: required by event type 'purchase'``;
- a declared field no action reads is optional: type-checked when the event carries
  it (a wrong type, a non-finite number or a string over the limit is
  INVALID_ARGUMENT), fine when it does not, so producers may send context the
  catalog does not use yet; an action added later to read it makes it required;
- attributes that are not declared are ignored.

The outcome types ``impression``, ``click``, ``conversion`` and ``dismissal`` always
exist: an event of one of them names an ``offer_id`` and a ``channel`` and adds a
contact to the profile's history, which contact policies read
(``decision.config.policies``). A catalog may declare them too, to give them fields and
actions (``[events.conversion]`` adding the amount to a revenue counter, say).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from decision.errors import CatalogError, InvalidArgument
from decision.store.layout import AttributeValue, ProfileRecord
from decision.config.policies import OUTCOMES

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TYPES = ("number", "string", "bool")


class Action(NamedTuple):
    op: str  # "set" | "add"
    target: str  # "attribute" | "counter" | "feature"
    name: str
    index: int  # feature index, -1 otherwise
    source: str  # "const" | "field" | "time"
    value: AttributeValue  # the literal, or the event field's name
    scale: float


class EventType(NamedTuple):
    name: str
    fields: dict[str, str]  # field -> declared type
    required: frozenset[str]  # fields some action reads: an event must carry them (the
    # other declared fields are optional, type-checked when present)
    actions: tuple[Action, ...]
    outcome: int = 0  # impression, click, ...: the contact kind (decision.config.policies)


def parse_event_types(table, feature_names: tuple[str, ...],
                      attribute_types: dict[str, str]) -> dict[str, EventType]:
    """Compile the catalog's ``[events]`` table; raise CatalogError naming the place."""
    if not isinstance(table, dict):
        raise CatalogError("events: must be a table of [events.<type>] tables")
    features = {f: j for j, f in enumerate(feature_names)}
    types = {}
    for name, spec in table.items():
        where = f"events.{name}"
        if not _NAME.match(name):
            raise CatalogError(f"{where}: type names are lowercase letters, digits and '_'")
        if not isinstance(spec, dict):
            raise CatalogError(f"{where}: must be a table")
        unknown = set(spec) - {"fields", "do"}
        if unknown:
            raise CatalogError(f"{where}: unknown key '{sorted(unknown)[0]}' (allowed: do, fields)")
        fields = spec.get("fields", {})
        if not isinstance(fields, dict):
            raise CatalogError(f"{where}.fields: must be a table of name = type")
        for field, ftype in fields.items():
            if not _NAME.match(field) or ftype not in _TYPES:
                raise CatalogError(f"{where}.fields.{field}: type must be one of "
                                   f"{', '.join(_TYPES)}, got {ftype!r}")
        actions = spec.get("do", [])
        if not isinstance(actions, list):
            raise CatalogError(f"{where}.do: must be a list of actions")
        compiled = tuple(_action(a, f"{where}.do[{i}]", fields, features, attribute_types)
                         for i, a in enumerate(actions))
        required = frozenset(a.value for a in compiled if a.source == "field")
        types[name] = EventType(name, dict(fields), required, compiled, OUTCOMES.get(name, 0))
    for name, kind in OUTCOMES.items():  # built in; a catalog may add actions to them
        types.setdefault(name, EventType(name, {}, frozenset(), (), kind))
    return types


def _action(spec, where: str, fields: dict, features: dict, attribute_types: dict) -> Action:
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: must be a table like {{ add = \"counter.x\", value = 1 }}")
    unknown = set(spec) - {"set", "add", "value", "scale"}
    if unknown:
        raise CatalogError(f"{where}: unknown key '{sorted(unknown)[0]}' "
                           "(allowed: add, scale, set, value)")
    ops = [op for op in ("set", "add") if op in spec]
    if len(ops) != 1:
        raise CatalogError(f"{where}: needs exactly one of set = \"...\" or add = \"...\"")
    op = ops[0]
    target_spec = spec[op]
    target, _, name = str(target_spec).partition(".")
    if target not in ("attribute", "counter", "feature") or not _NAME.match(name):
        raise CatalogError(f"{where}: target {target_spec!r} must be attribute.<name>, "
                           "counter.<name> or feature.<name>")
    if target == "counter" and op == "set":
        raise CatalogError(f"{where}: counters only add (merged profiles add them up); "
                           f"set attribute.{name} instead")
    index = -1
    if target == "feature":
        if name not in features:
            raise CatalogError(f"{where}: unknown feature '{name}' (declare it in "
                               "profile.features)")
        index = features[name]
    if "value" not in spec:
        raise CatalogError(f"{where}: needs a value (a literal, event.<field> or event.time)")
    raw = spec["value"]
    scale = spec.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
        raise CatalogError(f"{where}: scale must be a finite number")
    if isinstance(raw, str) and raw == "event.time":
        source, value, vtype = "time", raw, "number"
    elif isinstance(raw, str) and raw.startswith("event."):
        field = raw[len("event."):]
        if field not in fields:
            raise CatalogError(f"{where}: unknown event field '{field}' (declare it in "
                               f"fields; known: {', '.join(fields) or 'none'})")
        source, value, vtype = "field", field, fields[field]
    else:
        source, value = "const", raw
        vtype = ("bool" if isinstance(raw, bool) else "string" if isinstance(raw, str)
                 else "number" if isinstance(raw, (int, float)) else None)
        if vtype is None:
            raise CatalogError(f"{where}: value must be a number, string, bool, "
                               "event.<field> or event.time")
        if vtype == "number":
            value = float(raw)
    wanted = attribute_types.get(name) if target == "attribute" else "number"
    if op == "add" and vtype != "number":
        raise CatalogError(f"{where}: add needs a number, got a {vtype}")
    if wanted is not None and vtype != wanted:
        raise CatalogError(f"{where}: {target}.{name} is a {wanted}, the value is a {vtype}")
    if scale != 1.0 and vtype != "number":
        raise CatalogError(f"{where}: scale applies to numbers only")
    return Action(op, target, name, index, source, value, float(scale))


def apply(event_type: EventType, record: ProfileRecord, data: dict, time_ms: int) -> None:
    """Apply the type's actions to ``record`` in place (``data`` already validated).

    Raises InvalidArgument, leaving the caller to discard ``record``, when a number
    would stop being finite (a total that overflows: float64 for counters, float32
    for features)."""
    for a in event_type.actions:
        if a.source == "const":
            v = a.value
        elif a.source == "field":
            v = data[a.value]
        else:
            v = float(time_ms)
        if a.scale != 1.0:
            v = v * a.scale
        if a.target == "feature":
            x = record.features
            new = float(v) if a.op == "set" else float(x[a.index]) + v
            if not abs(new) <= FLOAT32_MAX:  # also catches NaN
                _not_finite(new, a, event_type)
            x[a.index] = new
        else:
            bag = record.attributes if a.target == "attribute" else record.counters
            if a.op == "set":
                new = v
            else:
                current = bag.get(a.name, 0.0)
                new = (current if isinstance(current, (int, float))
                       and not isinstance(current, bool) else 0.0) + v
            if isinstance(new, float) and not math.isfinite(new):
                _not_finite(new, a, event_type)
            bag[a.name] = new


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _not_finite(value: float, action: Action, event_type: EventType):
    shown = value if math.isfinite(value) and abs(value) <= FLOAT32_MAX else math.inf
    raise InvalidArgument(
        f"attributes: event type {event_type.name!r} would make {action.target}."
        f"{action.name} {shown} (not a finite number); the event was not applied")
