"""What the pages show, as plain data: the server's replies turned into view models.

The templates only lay these out (no logic beyond loops and ifs), and Jinja2 escapes
every string they print: whatever a profile or a creative holds (``<script>``
included) is shown as text. Nothing here builds HTML.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from decision.v1 import decision_pb2 as pb

#: a creative's image is used as an image only when it is a plain https URL (what the
#: pages' Content-Security-Policy loads; it goes into a CSS url(): no quotes, spaces,
#: parentheses or backslashes that could end it)
_IMAGE_URL = re.compile(r"^https://[^\s\"'()\\<>]+$")
#: creative keys shown in their own places, not in the list of other fields
_CREATIVE_MAIN = ("title", "image", "cta")


@dataclass(frozen=True)
class Field:
    name: str
    value: str
    changed: bool = False  #: changed since the page last showed it (live update)


@dataclass(frozen=True)
class ProfileView:
    kind: str
    value: str
    profile_key: str
    identifiers: list[Field]
    attributes: list[Field]
    counters: list[Field]
    segments: list[str]
    features: list[Field]  #: non-zero model features, largest magnitude first
    zero_features: int  #: how many features are 0 (not shown)
    created: str
    updated: str
    updated_at_ms: int
    events: list[Activity] = ()  #: the last events, newest first (every kind)
    contacts: list[Activity] = ()  #: the outcome events among them: the offers shown


OUTCOME_KINDS = ("impression", "click", "conversion", "dismissal")
RECENT_SHOWN = 10  #: events listed on the card (the server returns up to 20)


@dataclass(frozen=True)
class Activity:
    """One event on the profile card."""

    type: str
    when: str
    channel: str
    offer: str


@dataclass(frozen=True)
class Driver:
    name: str
    weight: float
    width: int  #: bar width, % of the largest |weight| in the offer (at least 4)


@dataclass(frozen=True)
class Creative:
    title: str = ""
    cta: str = ""
    image: str = ""  #: the image's URL when it is a plain https URL, else ""
    image_text: str = ""  #: the image value as text (a file name, an unusable URL)
    other: list[Field] = field(default_factory=list)


@dataclass(frozen=True)
class OfferView:
    rank: int
    offer_id: str
    name: str
    score: str
    propensity: str
    value: str
    lever: str
    rule: str  #: the eligibility rule that held ("no rule" when the offer has none)
    cold_start: bool
    drivers: list[Driver]
    creative: Creative


@dataclass(frozen=True)
class DecisionView:
    decision_id: str
    channel: str
    offers: list[OfferView]
    eligible_count: int
    policy_removed_count: int
    cold_start: bool
    catalog_version: str
    decided: str


def format_value(v: pb.Value) -> str:
    which = v.WhichOneof("kind")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "yes" if v.bool_value else "no"
    if which == "number_value":
        return format_number(v.number_value)
    return "-"


def format_attribute(name: str, v: pb.Value) -> str:
    """An attribute's value; a number named ``*_ms`` that looks like an epoch time in
    milliseconds (events set ``last_seen_ms`` and the like) as a UTC time."""
    if (name.endswith("_ms") and v.WhichOneof("kind") == "number_value"
            and 1e12 <= v.number_value < 1e14):
        return format_time(int(v.number_value))
    return format_value(v)


def format_number(x: float) -> str:
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.4g}" if abs(x) < 1e-3 or abs(x) >= 1e6 else f"{x:,.2f}"


def format_time(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def profile_view(profile: pb.Profile, kind: str, value: str,
                 before: pb.Profile | None = None) -> ProfileView:
    """The profile card. ``before``: the profile the page showed until now, to mark
    what changed (a live update)."""
    old_attrs = dict(before.attributes) if before is not None else {}
    old_counters = dict(before.counters) if before is not None else {}
    marks = before is not None

    def attr_changed(name: str) -> bool:
        return marks and (name not in old_attrs or old_attrs[name] != profile.attributes[name])

    def counter_changed(name: str) -> bool:
        return marks and old_counters.get(name) != profile.counters[name]

    features = sorted(((n, x) for n, x in profile.features.items() if x != 0),
                      key=lambda nx: (-abs(nx[1]), nx[0]))
    return ProfileView(
        kind=kind, value=value, profile_key=profile.profile_key,
        identifiers=[Field(i.kind or "customer_id", i.value) for i in profile.identifiers],
        attributes=[Field(n, format_attribute(n, profile.attributes[n]), attr_changed(n))
                    for n in sorted(profile.attributes)],
        counters=[Field(n, format_number(profile.counters[n]), counter_changed(n))
                  for n in sorted(profile.counters)],
        segments=sorted(profile.segments),
        features=[Field(n, f"{x:+.3f}") for n, x in features],
        zero_features=len(profile.features) - len(features),
        created=format_time(profile.created_at_ms), updated=format_time(profile.updated_at_ms),
        updated_at_ms=profile.updated_at_ms,
        events=[activity(e) for e in profile.recent_events[:RECENT_SHOWN]],
        contacts=[activity(e) for e in profile.recent_events if e.type in OUTCOME_KINDS],
    )


def activity(e: pb.ProfileEvent) -> Activity:
    return Activity(e.type, format_time(e.at_ms), e.channel, e.offer_id)


def creative_view(creative_json: str) -> Creative:
    try:
        data = json.loads(creative_json or "{}")
    except ValueError:
        return Creative(other=[Field("creative", creative_json)])
    if not isinstance(data, dict):
        return Creative(other=[Field("creative", creative_json)])

    def text(v) -> str:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    image = text(data["image"]) if "image" in data else ""
    usable = bool(_IMAGE_URL.match(image))
    return Creative(
        title=text(data.get("title", "")), cta=text(data.get("cta", "")),
        image=image if usable else "", image_text=image,
        other=[Field(k, text(v)) for k, v in data.items() if k not in _CREATIVE_MAIN])


def offer_view(o: pb.DecidedOffer) -> OfferView:
    rule = next((r.detail for r in o.reasons if r.code == "ELIGIBLE"), "")
    features = [r for r in o.reasons if r.code == "FEATURE"]
    top = max((abs(r.weight) for r in features), default=0.0) or 1.0
    return OfferView(
        rank=o.rank, offer_id=o.offer_id, name=o.name or o.offer_id,
        score=f"{o.score:,.2f}", propensity=f"{o.propensity:.1%}", value=f"{o.value:,.2f}",
        lever=f"{o.lever:g}", rule=rule,
        cold_start=any(r.code == "COLD_START" for r in o.reasons),
        drivers=[Driver(r.detail, r.weight, max(4, round(100 * abs(r.weight) / top)))
                 for r in features],
        creative=creative_view(o.creative_json))


def decision_view(reply: pb.DecideResponse, channel: str) -> DecisionView:
    return DecisionView(
        decision_id=reply.decision_id, channel=channel,
        offers=[offer_view(o) for o in reply.offers], eligible_count=reply.eligible_count,
        policy_removed_count=reply.policy_removed_count, cold_start=reply.cold_start,
        catalog_version=reply.catalog_version, decided=format_time(reply.decided_at_ms))
