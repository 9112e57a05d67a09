"""Contact policies: how often a customer may be shown what, compiled for the kernels.

Declared in the catalog, one ``[[policy]]`` table each, in three shapes::

    [[policy]]                      # at most 3 impressions of an offer a week
    name = "offer-weekly"
    type = "cap"
    scope = "offer"                 # offer | channel | customer
    count = "impression"            # impression (default) | click | conversion | dismissal
    max = 3
    per = "7d"                      # sliding window

    [[policy]]                      # at most 1 e-mail a day, whatever the offer
    name = "email-daily"
    type = "cap"
    scope = "channel"
    max = 1
    per = "1d"
    channels = ["email"]

    [[policy]]                      # an offer converted is not offered again for 30 days
    name = "after-purchase"
    type = "suppress"
    after = "conversion"            # conversion | dismissal | click | impression
    for = "30d"

    [[policy]]                      # not the same offer twice within the hour
    name = "cooldown"
    type = "cooldown"
    for = "1h"                      # after an impression of the offer

Any policy may also name ``channels`` (it applies to decisions on those channels and
counts the contacts made on them; default: all) and ``offers`` (the offers it can
remove; default: all). Scopes count:

- ``offer``: contacts with that offer (a suppression or cooldown is an offer cap of
  fewer than 1 contact of its kind within its period);
- ``channel``: contacts of any offer on the channel being decided;
- ``customer``: contacts of any offer on the policy's channels (or any channel).

An offer is removed when a policy that applies to it has counted ``max`` or more
contacts within the window that ends now; the reason names the first such policy
(in catalog order).

The contacts themselves
-----------------------
Impressions and responses arrive as events of the built-in types ``impression``,
``click``, ``conversion`` and ``dismissal`` (``Track``, with ``offer_id``,
``channel`` and the ``decision_id`` Decide returned). Each appends one contact to
the profile's contact history (``decision.store.layout``), in the transaction that applies
the event: int64 pairs ``(at_ms, tag)`` with

    tag = offer_sid << 24 | channel_sid << 8 | kind

where ``offer_sid`` (32 bits) and ``channel_sid`` (16 bits) are stable hashes of the
offer id and channel name (a catalog whose ids collide is refused at load), and kind
is 1..4 as ``OUTCOMES`` lists. Contacts older than the longest policy period are
dropped at the next write; at most ``MAX_CONTACTS`` are kept (the newest).
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import numpy as np

from decision.errors import CatalogError
from decision.config.timing import duration_ms, format_duration

OUTCOMES = {"impression": 1, "click": 2, "conversion": 3, "dismissal": 4}
SCOPES = {"offer": 0, "channel": 1, "customer": 2}
MAX_CONTACTS = 512  # contact records kept per profile
MAX_CAP = MAX_CONTACTS // 2  # the largest cap a policy may set
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


def offer_sid(offer_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(offer_id.encode(), digest_size=4).digest(), "big")


def channel_sid(channel: str) -> int:
    return int.from_bytes(hashlib.blake2b(channel.encode(), digest_size=2).digest(), "big")


def contact_tag(offer: str, channel: str, kind: int) -> int:
    return offer_sid(offer) << 24 | channel_sid(channel) << 8 | kind


class Policy(NamedTuple):
    name: str
    type: str
    scope: str
    kind: str
    max: int
    window_ms: int
    channels: tuple[str, ...]
    offers: tuple[str, ...]
    period: str = ""  # the window as the catalog writes it ("30d")

    def describe(self) -> str:
        where = f" on {', '.join(self.channels)}" if self.channels else ""
        period = self.period or format_duration(self.window_ms)
        if self.type == "cap":
            what = {"offer": "of this offer", "channel": "on this channel",
                    "customer": "in all"}[self.scope]
            return f"{self.name}: at most {self.max} {self.kind}(s) {what}{where} per {period}"
        return f"{self.name}: {self.type} for {period} after a {self.kind}{where}"


class PolicySet:
    """The catalog's contact policies as kernel arrays (immutable).

    pol_scope, pol_kind, pol_max, pol_window (ms), pol_channels (channel bitmask, 0 =
    all): int64[P]; pol_offers: bool[P, n]; sorted_sids/sid_offer: the offers' stable
    ids, sorted, and the offer index of each; channel_sids: int64[C], the stable id of
    the channel of each bit. ``horizons``: int64[kind], the longest period of the
    policies counting each contact kind (older contacts of that kind are dropped)."""

    def __init__(self, table, channels: tuple[str, ...], offer_ids: list[str]):
        if not isinstance(table, list):
            raise CatalogError("policy: write each contact policy as a [[policy]] table")
        self.policies = tuple(_policy(p, i, channels, offer_ids) for i, p in enumerate(table))
        names = [p.name for p in self.policies]
        for name in names:
            if names.count(name) > 1:
                raise CatalogError(f"policy '{name}': defined twice")
        n, count = len(offer_ids), len(self.policies)
        index = {o: i for i, o in enumerate(offer_ids)}
        bit = {c: 1 << i for i, c in enumerate(channels)}
        self.pol_scope = np.array([SCOPES[p.scope] for p in self.policies], dtype=np.int64)
        self.pol_kind = np.array([OUTCOMES[p.kind] for p in self.policies], dtype=np.int64)
        self.pol_max = np.array([p.max for p in self.policies], dtype=np.int64)
        self.pol_window = np.array([p.window_ms for p in self.policies], dtype=np.int64)
        self.pol_channels = np.array([sum(bit[c] for c in p.channels) for p in self.policies],
                                     dtype=np.int64)
        self.pol_offers = np.zeros((count, n), dtype=np.bool_)
        for j, p in enumerate(self.policies):
            if p.offers:
                self.pol_offers[j, [index[o] for o in p.offers]] = True
            else:
                self.pol_offers[j, :] = True
        sids = np.array([offer_sid(o) for o in offer_ids], dtype=np.int64)
        order = np.argsort(sids, kind="stable")
        self.sorted_sids = sids[order]
        self.sid_offer = order.astype(np.int64)
        duplicate = np.nonzero(np.diff(self.sorted_sids) == 0)[0]
        if duplicate.size:
            a, b = offer_ids[order[duplicate[0]]], offer_ids[order[duplicate[0] + 1]]
            raise CatalogError(f"offers '{a}' and '{b}' have the same 32-bit contact id; "
                               "rename one of them")
        self.channel_sids = np.array([channel_sid(c) for c in channels], dtype=np.int64)
        if len(set(self.channel_sids.tolist())) != len(channels):
            raise CatalogError("two channel names have the same 16-bit contact id; rename one")
        # per contact kind, how long a policy may still count it (older: dropped)
        self.horizons = np.zeros(len(OUTCOMES) + 1, dtype=np.int64)
        for p in self.policies:
            kind = OUTCOMES[p.kind]
            self.horizons[kind] = max(self.horizons[kind], p.window_ms)
        for array in (self.pol_scope, self.pol_kind, self.pol_max, self.pol_window,
                      self.pol_channels, self.pol_offers, self.sorted_sids, self.sid_offer,
                      self.channel_sids):
            array.flags.writeable = False

    @property
    def arrays(self) -> tuple:
        """The kernel's policy arguments, in ``kernels.policies.contact_blocks`` order."""
        return (self.pol_scope, self.pol_kind, self.pol_max, self.pol_window,
                self.pol_channels, self.pol_offers, self.sorted_sids, self.sid_offer,
                self.channel_sids)


def _policy(spec, position: int, channels: tuple[str, ...], offer_ids: list[str]) -> Policy:
    if not isinstance(spec, dict):
        raise CatalogError(f"policy #{position + 1}: must be a table")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogError(f"policy #{position + 1}: name must be 1-64 letters, digits or "
                           f"_.:- (it is shown in reasons), got {name!r}")
    where = f"policy '{name}'"
    ptype = spec.get("type")
    allowed = {"cap": {"name", "type", "scope", "count", "max", "per", "channels", "offers"},
               "suppress": {"name", "type", "after", "for", "channels", "offers"},
               "cooldown": {"name", "type", "for", "channels", "offers"}}
    if ptype not in allowed:
        raise CatalogError(f"{where}: type must be cap, suppress or cooldown, got {ptype!r}")
    unknown = sorted(set(spec) - allowed[ptype])
    if unknown:
        raise CatalogError(f"{where}: unknown key '{unknown[0]}' for a {ptype} (allowed: "
                           f"{', '.join(sorted(allowed[ptype]))})")
    policy_channels = _list(spec.get("channels", []), f"{where}.channels")
    for c in policy_channels:
        if c not in channels:
            raise CatalogError(f"{where}.channels: unknown channel '{c}' (catalog channels: "
                               f"{', '.join(channels)})")
    offers = _list(spec.get("offers", []), f"{where}.offers")
    known = set(offer_ids)
    for o in offers:
        if o not in known:
            raise CatalogError(f"{where}.offers: unknown offer '{o}'")
    if ptype == "cap":
        scope = spec.get("scope", "offer")
        if scope not in SCOPES:
            raise CatalogError(f"{where}.scope: offer, channel or customer, got {scope!r}")
        kind = spec.get("count", "impression")
        maximum = spec.get("max")
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise CatalogError(f"{where}.max: a whole number >= 1 (a cap of 0 would remove "
                               f"every offer it applies to: remove them instead), got "
                               f"{maximum!r}")
        if maximum > MAX_CAP:
            raise CatalogError(f"{where}.max: at most {MAX_CAP} (a profile keeps its last "
                               f"{MAX_CONTACTS} contacts, so a larger cap could not be "
                               f"counted), got {maximum}")
        if "per" not in spec:
            raise CatalogError(f"{where}.per: required, the sliding window (\"7d\", \"1d\")")
        window = duration_ms(spec["per"], f"{where}.per")
        period = spec["per"]
    else:
        scope, maximum = "offer", 1
        kind = spec.get("after", "impression") if ptype == "suppress" else "impression"
        if "for" not in spec:
            raise CatalogError(f"{where}.for: required, how long (\"30d\", \"1h\")")
        window = duration_ms(spec["for"], f"{where}.for")
        period = spec["for"]
    if kind not in OUTCOMES:
        raise CatalogError(f"{where}: counts {', '.join(OUTCOMES)}, got {kind!r}")
    return Policy(name, ptype, scope, kind, maximum, window, policy_channels, offers,
                  period.strip())


def _list(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: must be a list of strings")
    return tuple(value)


def record_contact(contacts: np.ndarray, at_ms: int, tag: int, now_ms: int,
                   horizons: np.ndarray) -> np.ndarray:
    """The history with one more contact (see ``trim_contacts``)."""
    merged = np.concatenate([np.asarray(contacts, dtype=np.int64).reshape(-1, 2),
                             np.array([[at_ms, tag]], dtype=np.int64)])
    return trim_contacts(merged, now_ms, horizons)


def trim_contacts(contacts: np.ndarray, now_ms: int, horizons: np.ndarray | None) -> np.ndarray:
    """In time order; without the contacts no policy can count any more (older than the
    longest period of the policies counting their kind: ``horizons[kind]``); at most
    ``MAX_CONTACTS``, dropping the oldest impressions and clicks before any conversion
    or dismissal (a suppression outlives a flood of impressions)."""
    contacts = contacts[np.argsort(contacts[:, 0], kind="stable")]
    kinds = contacts[:, 1] & 0xFF
    if horizons is not None:
        limit = horizons[np.clip(kinds, 0, len(horizons) - 1)]
        keep = contacts[:, 0] > now_ms - limit
        contacts, kinds = contacts[keep], kinds[keep]
    excess = contacts.shape[0] - MAX_CONTACTS
    if excess > 0:
        light = np.nonzero((kinds == OUTCOMES["impression"]) | (kinds == OUTCOMES["click"]))[0]
        drop = light[:excess]  # the oldest impressions and clicks
        keep = np.ones(contacts.shape[0], dtype=bool)
        keep[drop] = False
        contacts = contacts[keep]
        contacts = contacts[-MAX_CONTACTS:]
    return np.ascontiguousarray(contacts)
