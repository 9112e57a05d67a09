"""The offer catalog: a human-edited TOML file compiled into immutable arrays.

File layout (every key is documented in README.md, "Catalog reference")::

    version    = "spring-2026"                  # optional label
    channels   = ["web", "app", "kiosk", "contact_center", "email"]
    placements = ["home_hero", "checkout"]      # optional

    [profile]
    features = ["recency_days", "orders_90d"]   # the stored float32 feature vector
    counters = ["purchases", "revenue"]         # what rules may read as counter.<name>
    [profile.attributes]                        # what rules may read as profile.<name>
    tier = "number"
    country = "string"
    [context]                                   # what rules may read as context.<name>
    country = "string"

    [model]                                     # logistic propensity model
    intercept = -2.0
    offer_features = ["premium", "discount"]
    customer_weights = { recency_days = -0.4 }
    offer_weights = { premium = 0.3 }
    interactions = { orders_90d = [0.2, -0.1] } # one weight per offer feature

    [segments]                                  # see decision.config.segments
    high_value = "counter.revenue >= 1000"

    [triggers.cart_reminder]                    # see decision.config.triggers
    event = "add_to_cart"
    when = "not segment.high_value"

    [events.purchase]                           # see decision.config.events
    fields = { amount = "number" }
    do = [{ add = "counter.revenue", value = "event.amount" }]

    [pace.email]                                # see decision.config.pace
    deliver = "later"
    quiet_hours = ["21:00", "08:00"]

    [[policy]]                                  # see decision.config.policies
    name = "offer-weekly"
    type = "cap"
    max = 3
    per = "7d"

    [[offer]]
    id = "spring-upgrade"
    name = "Upgrade to Premium"
    channels = ["web", "app"]
    placements = ["home_hero"]                  # omitted or empty: any placement
    value = 45.0                                # business value, >= 0
    lever = 1.0                                 # priority lever, >= 0 (default 1)
    valid_from = 2026-03-01T00:00:00Z           # optional window, [from, until)
    valid_until = 2026-06-01T00:00:00Z
    rule = 'profile.tier >= 2 and context.country == "FR"'
    features = { premium = 1.0 }
    [offer.creative]                            # returned untouched, as JSON
    title = "Fly Premium"

``load_catalog`` validates everything, compiles the rules and the model, and returns a
``Catalog``: immutable, built aside and swapped in whole on reload. Errors name the
offer and the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

from decision.errors import CatalogError, RuleError
from decision.config.events import EventType, parse_event_types
from decision.config.learning import Learning, parse_learning
from decision.config.pace import ChannelPace, parse_pace
from decision.config.policies import PolicySet
from decision.config.rules import Field, FieldTable, ProgramBuilder
from decision.config.segments import SegmentSet
from decision.config.triggers import TriggerSet
from kernels.decide import Visit, visit_plan

MAX_BITS = 63  # channels and placements are bits of an int64 mask
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Offer:
    """One offer as written in the catalog (the human-facing part)."""

    id: str
    name: str
    channels: tuple[str, ...]
    placements: tuple[str, ...]
    value: float
    lever: float
    rule: str
    valid_from: float  # epoch seconds, -inf when open
    valid_until: float  # epoch seconds, +inf when open
    creative_json: str
    features: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Catalog:
    """An immutable, compiled catalog version.

    The arrays are what the kernels read (see ``kernels.decide.decide_offers``);
    offers are sorted by id, so array index order is id order.
    """

    version: str
    path: Path
    channels: tuple[str, ...]
    placements: tuple[str, ...]
    offers: tuple[Offer, ...]
    fields: FieldTable
    feature_names: tuple[str, ...]
    code: np.ndarray  # int32[m, 3]
    programs: np.ndarray  # int32[n, 2] rule program rows (start, end) per offer
    consts: np.ndarray  # float64[c]
    offer_masks: np.ndarray  # int64[n, 2] channel, placement bits
    offer_window: np.ndarray  # float64[n, 2] valid from/until, epoch s
    offer_value: np.ndarray  # float64[n, 2] value, lever
    visit: Visit  # the per-offer arrays in the kernels' visiting order
    weights: np.ndarray  # float32[n, F]
    bias: np.ndarray  # float64[n]
    model: "Model"  # the [model] as written: the learned models' prior
    offer_vectors: np.ndarray  # float64[n, D]: each offer's model.offer_features values
    learning: Learning  # [learning], [explore], [control], [experiments]
    profile_fields: tuple[Field, ...]  # profile/counter/segment fields offer rules read
    context_fields: dict[str, Field]
    events: dict[str, EventType]  # event types: what each does to a profile
    segments: SegmentSet
    triggers: TriggerSet
    pace: dict[str, ChannelPace]  # every channel's
    policies: PolicySet
    offer_index: dict[str, int]  # offer id -> array index
    loaded_at_ms: int

    @property
    def channel_bits(self) -> dict[str, int]:
        return _bits(self.channels)

    @property
    def placement_bits(self) -> dict[str, int]:
        return _bits(self.placements)

    def offers_for(self, channel: str = "", placement: str = "") -> list[Offer]:
        return [
            o for o in self.offers
            if (not channel or channel in o.channels)
            and (not placement or not o.placements or placement in o.placements)
        ]


def load_catalog(path: str | Path) -> Catalog:
    """Read, validate and compile the catalog at ``path``; raise CatalogError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of nested arrays / inline tables
        raise CatalogError(f"{path}: not valid TOML: arrays or inline tables nested too "
                           "deeply") from None
    try:
        return _compile(doc, path, hashlib.sha256(raw).hexdigest())
    except CatalogError as exc:
        raise type(exc)(f"{path}: {exc}") from None


# ------------------------------------------------------------------ compilation
def _compile(doc: dict, path: Path, digest: str) -> Catalog:
    _only_keys(doc, "catalog", {"version", "channels", "placements", "profile", "context",
                                "model", "offer", "events", "segments", "triggers", "pace",
                                "policy", "learning", "explore", "control", "experiments"})
    channels = _names(doc.get("channels"), "channels", required=True)
    placements = _names(doc.get("placements", []), "placements", required=False)
    profile = _table(doc, "profile")
    _only_keys(profile, "[profile]", {"features", "attributes", "counters"})
    feature_names = _names(profile.get("features", []), "profile.features", required=False)
    segment_rules = _table(doc, "segments")
    for name, rule in segment_rules.items():
        if not _NAME.match(name) or not isinstance(rule, str):
            raise CatalogError(f"segments.{name}: a segment is name = \"rule\" (lowercase "
                               "letters, digits and '_')")
    fields = FieldTable(_types(profile.get("attributes", {}), "profile.attributes"),
                        _types(doc.get("context", {}), "context"),
                        counters=_names(profile.get("counters", []), "profile.counters",
                                        required=False),
                        segments=tuple(segment_rules))
    segments = SegmentSet(segment_rules, fields)
    model = Model.parse(_table(doc, "model"), feature_names)
    events = parse_event_types(doc.get("events", {}), feature_names,
                               _types(profile.get("attributes", {}), "profile.attributes"))
    pace = parse_pace(doc.get("pace", {}), channels)

    raw_offers = doc.get("offer", [])
    if not isinstance(raw_offers, list) or not raw_offers:
        raise CatalogError("no offers: add at least one [[offer]] table")
    offers = sorted((_offer(o, i, channels, placements, model) for i, o in
                     enumerate(raw_offers)), key=lambda o: o.id)
    for a, b in zip(offers, offers[1:]):
        if a.id == b.id:
            raise CatalogError(f"offer '{a.id}' is defined twice")
    offer_ids = [o.id for o in offers]
    policies = PolicySet(doc.get("policy", []), channels, offer_ids)
    triggers = TriggerSet(doc.get("triggers", {}), events, fields, channels, placements)
    learning = parse_learning(doc, channels, set(offer_ids))

    n = len(offers)
    builder = ProgramBuilder(fields)
    programs = np.zeros((n, 2), dtype=np.int32)
    for i, o in enumerate(offers):
        try:
            programs[i] = builder.add(o.rule)
        except RuleError as exc:
            raise RuleError(f"offer '{o.id}': {exc}") from None
    code, consts = builder.arrays()

    chan_bit, place_bit = _bits(channels), _bits(placements)
    offer_masks = np.array(
        [[sum(chan_bit[c] for c in o.channels), sum(place_bit[p] for p in o.placements)]
         for o in offers], dtype=np.int64)
    offer_window = np.array([[o.valid_from, o.valid_until] for o in offers], dtype=np.float64)
    offer_value = np.array([[o.value, o.lever] for o in offers], dtype=np.float64)
    offer_vectors = model.offer_vectors(offers)
    weights, bias = model.offer_arrays(offer_vectors)

    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise CatalogError("model: weights too large (a folded per-offer weight or bias is "
                           "not finite in float32); scale the features or the weights down")
    arrays = (code, programs, consts, offer_masks, offer_window, offer_value, weights, bias,
              offer_vectors)
    for array in arrays:
        array.flags.writeable = False  # a catalog version is immutable
    visit = visit_plan(programs, offer_masks, offer_window, offer_value, weights, bias)

    label = doc.get("version")
    if label is not None and not isinstance(label, str):
        raise CatalogError("version must be a string")
    version = f"{label}@{digest[:12]}" if label else digest[:12]
    used = sorted(builder.used, key=lambda f: f.slot)
    return Catalog(
        version=version, path=path, channels=channels, placements=placements,
        offers=tuple(offers), fields=fields, feature_names=feature_names,
        code=code, programs=programs, consts=consts, offer_masks=offer_masks,
        offer_window=offer_window, offer_value=offer_value, visit=visit,
        weights=weights, bias=bias, model=model, offer_vectors=offer_vectors,
        learning=learning,
        profile_fields=tuple(f for f in used if f.namespace != "context"),
        context_fields={f.name: f for f in used if f.namespace == "context"},
        events=events, segments=segments, triggers=triggers, pace=pace, policies=policies,
        offer_index={o: i for i, o in enumerate(offer_ids)},
        loaded_at_ms=int(time.time() * 1000),
    )


@dataclass(frozen=True)
class Model:
    """The logistic model: log-odds = b + w_c.x + w_o.e + x^T A e."""

    intercept: float
    customer_weights: np.ndarray  # float64[F]
    offer_features: tuple[str, ...]
    offer_weights: np.ndarray  # float64[D]
    interactions: np.ndarray  # float64[F, D]

    @classmethod
    def parse(cls, model: dict, feature_names: tuple[str, ...]) -> "Model":
        _only_keys(model, "[model]", {"intercept", "customer_weights", "offer_features",
                                      "offer_weights", "interactions"})
        offer_features = _names(model.get("offer_features", []), "model.offer_features",
                                required=False)
        f_index = {f: j for j, f in enumerate(feature_names)}
        d_index = {d: j for j, d in enumerate(offer_features)}
        w_c = np.zeros(len(feature_names))
        for name, w in _table(model, "customer_weights").items():
            w_c[_index(f_index, name, "model.customer_weights", "profile.features")] = \
                _number(w, f"model.customer_weights.{name}")
        w_o = np.zeros(len(offer_features))
        for name, w in _table(model, "offer_weights").items():
            w_o[_index(d_index, name, "model.offer_weights", "model.offer_features")] = \
                _number(w, f"model.offer_weights.{name}")
        a = np.zeros((len(feature_names), len(offer_features)))
        for name, row in _table(model, "interactions").items():
            j = _index(f_index, name, "model.interactions", "profile.features")
            if not isinstance(row, list) or len(row) != len(offer_features):
                raise CatalogError(
                    f"model.interactions.{name}: expected a list of {len(offer_features)} "
                    "numbers, one per model.offer_features entry"
                )
            a[j] = [_number(v, f"model.interactions.{name}") for v in row]
        return cls(_number(model.get("intercept", 0.0), "model.intercept"), w_c,
                   offer_features, w_o, a)

    def offer_vector(self, features: dict, where: str) -> np.ndarray:
        d_index = {d: j for j, d in enumerate(self.offer_features)}
        e = np.zeros(len(self.offer_features))
        for name, v in features.items():
            e[_index(d_index, name, where, "model.offer_features")] = _number(v, f"{where}.{name}")
        return e

    def offer_vectors(self, offers: list[Offer]) -> np.ndarray:
        """float64[n, D]: each offer's values of ``offer_features``."""
        return np.array([self.offer_vector(o.features, f"offer '{o.id}': features")
                         for o in offers], dtype=np.float64).reshape(len(offers),
                                                                     len(self.offer_features))

    def offer_arrays(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The folded per-offer (weights float32[n, F], bias float64[n]) for the offers'
        feature vectors ``e``."""
        weights = self.customer_weights[None, :] + e @ self.interactions.T
        bias = self.intercept + e @ self.offer_weights
        with np.errstate(over="ignore"):  # overflow is reported by the caller's check
            return (np.ascontiguousarray(weights, dtype=np.float32),
                    np.ascontiguousarray(bias, dtype=np.float64))


def _offer(o: object, position: int, channels, placements, model: Model) -> Offer:
    if not isinstance(o, dict):
        raise CatalogError(f"offer #{position + 1}: must be a table")
    oid = o.get("id")
    if not isinstance(oid, str) or not _ID.match(oid):
        raise CatalogError(
            f"offer #{position + 1}: id must be 1-64 letters, digits or _.:- "
            f"(starting with a letter or digit), got {oid!r}"
        )
    where = f"offer '{oid}'"
    try:
        _only_keys(o, where, {"id", "name", "channels", "placements", "value", "lever",
                              "rule", "valid_from", "valid_until", "creative", "features"})
        offer_channels = _names(o.get("channels"), "channels", required=True)
        for c in offer_channels:
            if c not in channels:
                raise CatalogError(f"channels: unknown channel '{c}' (catalog channels: "
                                   f"{', '.join(channels)})")
        offer_placements = _names(o.get("placements", []), "placements", required=False)
        for p in offer_placements:
            if p not in placements:
                raise CatalogError(f"placements: unknown placement '{p}' (catalog "
                                   f"placements: {', '.join(placements) or 'none declared'})")
        value = _number(o.get("value"), "value", minimum=0.0)
        lever = _number(o.get("lever", 1.0), "lever", minimum=0.0)
        valid_from = _instant(o.get("valid_from"), "valid_from", -math.inf)
        valid_until = _instant(o.get("valid_until"), "valid_until", math.inf)
        if valid_from >= valid_until:
            raise CatalogError("valid_from must be before valid_until")
        rule = o.get("rule", "")
        if not isinstance(rule, str):
            raise CatalogError("rule must be a string")
        name = o.get("name", oid)
        if not isinstance(name, str):
            raise CatalogError("name must be a string")
        creative = o.get("creative", {})
        if not isinstance(creative, dict):
            raise CatalogError("creative must be a table")
        features = _table(o, "features")
        model.offer_vector(features, "features")  # validates names and numbers
    except CatalogError as exc:
        raise CatalogError(f"{where}: {exc}") from None
    return Offer(
        id=oid, name=name, channels=offer_channels, placements=offer_placements,
        value=value, lever=lever, rule=rule.strip(), valid_from=valid_from,
        valid_until=valid_until, features=dict(features),
        creative_json=json.dumps(creative, sort_keys=True, separators=(",", ":"),
                                 ensure_ascii=False, default=str),
    )


def _bits(names: tuple[str, ...]) -> dict[str, int]:
    """Each name's bit in an int64 mask, in declaration order."""
    return {name: 1 << i for i, name in enumerate(names)}


# ------------------------------------------------------------------ validation
def _only_keys(table: dict, where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown key '{unknown[0]}' (allowed: "
                           f"{', '.join(sorted(allowed))})")


def _table(doc: dict, key: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise CatalogError(f"{key} must be a table")
    return value


def _names(value, where: str, required: bool) -> tuple[str, ...]:
    if value is None or (required and value == []):
        raise CatalogError(f"{where}: required, a non-empty list of names")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: must be a list of strings")
    for v in value:
        if not _NAME.match(v):
            raise CatalogError(f"{where}: '{v}' must be lowercase letters, digits and '_'")
    if len(set(value)) != len(value):
        raise CatalogError(f"{where}: names must be unique")
    if where in ("channels", "placements") and len(value) > MAX_BITS:
        raise CatalogError(f"{where}: at most {MAX_BITS} entries")
    return tuple(value)


def _types(table, where: str) -> dict:
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table of name = \"number\"|\"string\"|\"bool\"")
    for name in table:
        if not _NAME.match(name):
            raise CatalogError(f"{where}.{name}: names must be lowercase letters, digits, '_'")
    return table


def _index(index: dict, name: str, where: str, declared_in: str) -> int:
    if name not in index:
        raise CatalogError(f"{where}: unknown feature '{name}' (declare it in {declared_in})")
    return index[name]


def _number(value, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogError(f"{where}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise CatalogError(f"{where}: must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise CatalogError(f"{where}: must be >= {minimum:g}, got {value:g}")
    return value


def _instant(value, where: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    raise CatalogError(f"{where}: must be a TOML date or date-time, got {value!r}")
