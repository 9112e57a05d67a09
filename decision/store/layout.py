"""The byte layout of a stored profile (layout version 1).

A profile value is a fixed binary head the kernels read in place, then msgpack::

    offset  size  field
    0       2     magic b"DP"
    2       1     layout version (1)
    3       1     flags (0, reserved)
    4       2     F, the number of features (uint16, little-endian)
    6       2     H, the number of contact records (uint16; 0 in records written
                  before contact policies existed, which read as "no contacts")
    8       8     updated_at_ms (int64, little-endian)
    16      4*F   features, float32 little-endian: read with np.frombuffer, no copy
    C       16*H  only when H > 0, at C = 16+4F rounded up to 8: the contact history,
                  int64 little-endian pairs (at_ms, tag), oldest first, read in place
                  by the policy kernel (``decision.config.policies`` explains the tag)
    T       ...   msgpack map, at T = 16+4F when H = 0, else C+16H:
                               {"a": attributes {name: str|float|bool},
                                "c": counters {name: float},
                                "i": identifiers [[kind, value], ...],
                                "s": segments the profile belongs to [name, ...],
                                "m": keys of the profiles merged into it [int, ...],
                                "t": created_at_ms,
                                "e": the last RECENT_EVENTS events applied, oldest
                                     first, each msgpack [type, at_ms, channel,
                                     offer_id, decision_id] packed on its own (bytes:
                                     an event's write decodes and re-encodes 20 bytes
                                     objects, not 100 strings) (absent: none)}

The head is 16 bytes so the feature vector is 4-byte aligned relative to the value;
numba reads it either way (unaligned views compile to the same signature). Readers
refuse a value with another magic or a newer layout version (``CorruptProfile``),
so the format can evolve by bumping the version and migrating.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import msgpack
import numpy as np

from decision.errors import CorruptProfile

MAGIC = b"DP"
LAYOUT_VERSION = 1
HEAD = struct.Struct("<2sBBHHq")
HEAD_SIZE = HEAD.size  # 16
MAX_CONTACTS = 0xFFFF

AttributeValue = str | float | bool
NO_CONTACTS = np.zeros((0, 2), dtype="<i8")
NO_CONTACTS.flags.writeable = False  # same numba type as a view over the map


@dataclass
class ProfileRecord:
    """A decoded profile (a copy, safe to keep after the read transaction ends)."""

    key: int
    features: np.ndarray  # float32[F], writable copy
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    merged_keys: list[int] = field(default_factory=list)  # profiles merged into this one
    created_at_ms: int = 0
    updated_at_ms: int = 0
    contacts: np.ndarray = field(default_factory=lambda: NO_CONTACTS)  # int64[H, 2]: (at_ms, tag), oldest first
    recent: list[bytes] = field(default_factory=list)  # the last events, oldest first ("e")


def contacts_offset(n_features: int) -> int:
    return (HEAD_SIZE + 4 * n_features + 7) & ~7


def encode(record: ProfileRecord) -> bytes:
    features = np.ascontiguousarray(record.features, dtype="<f4")
    contacts = np.ascontiguousarray(record.contacts, dtype="<i8").reshape(-1, 2)
    n_contacts = contacts.shape[0]
    if n_contacts > MAX_CONTACTS:
        raise ValueError(f"{n_contacts} contact records, at most {MAX_CONTACTS}")
    head = HEAD.pack(MAGIC, LAYOUT_VERSION, 0, features.shape[0], n_contacts,
                     record.updated_at_ms)
    body = head + features.tobytes()
    if n_contacts:
        body += bytes(contacts_offset(features.shape[0]) - len(body)) + contacts.tobytes()
    tail = msgpack.packb(
        {"a": record.attributes, "c": record.counters,
         "i": [list(i) for i in record.identifiers], "s": record.segments,
         "m": record.merged_keys, "t": record.created_at_ms,
         **({"e": record.recent} if record.recent else {})},
        use_bin_type=True,
    )
    return body + tail


def read_head(buf, key: int, n_expected: int | None = None) -> tuple[int, int, int]:
    """Validate the head of ``buf`` (and its feature count, when ``n_expected`` is
    given); return (feature count, contact count, offset of the msgpack tail)."""
    if len(buf) < HEAD_SIZE:
        raise CorruptProfile(f"profile {key:016x}: value of {len(buf)} bytes is too short")
    magic, version, _flags, n_features, n_contacts, _updated = HEAD.unpack_from(buf)
    if magic != MAGIC or version != LAYOUT_VERSION:
        raise CorruptProfile(
            f"profile {key:016x}: not a profile of layout {LAYOUT_VERSION} "
            f"(magic {magic!r}, version {version})"
        )
    tail_at = (contacts_offset(n_features) + 16 * n_contacts if n_contacts
               else HEAD_SIZE + 4 * n_features)
    if len(buf) < tail_at:
        raise CorruptProfile(f"profile {key:016x}: truncated feature vector or contacts")
    if n_expected is not None and n_features != n_expected:
        raise CorruptProfile(f"profile {key:016x}: {n_features} features stored, the "
                             f"store's schema has {n_expected}")
    return n_features, n_contacts, tail_at


def check_head(buf, key: int, n_expected: int | None = None) -> int:
    """``read_head``'s feature count."""
    return read_head(buf, key, n_expected)[0]


def feature_view(buf, n_features: int) -> np.ndarray:
    """float32[F] over ``buf`` itself (read-only, valid while ``buf`` is)."""
    return np.frombuffer(buf, dtype="<f4", count=n_features, offset=HEAD_SIZE)


def contact_count(buf) -> int:
    return _CONTACTS.unpack_from(buf, 6)[0]


def tail_offset(buf, n_features: int) -> int:
    n_contacts = contact_count(buf)
    if not n_contacts:
        return HEAD_SIZE + 4 * n_features
    return contacts_offset(n_features) + 16 * n_contacts


def contacts_view(buf, n_features: int, n_contacts: int | None = None) -> np.ndarray:
    """int64[H, 2] over ``buf`` itself (read-only; ``NO_CONTACTS`` when H = 0)."""
    if n_contacts is None:
        n_contacts = contact_count(buf)
    if not n_contacts:
        return NO_CONTACTS
    return np.frombuffer(buf, dtype="<i8", count=2 * n_contacts,
                         offset=contacts_offset(n_features)).reshape(n_contacts, 2)


_CONTACTS = struct.Struct("<H")


_TAIL_SHAPE = {"a": dict, "c": dict, "i": list, "t": int}
_TAIL_OPTIONAL = {"s": list, "m": list, "e": list}  # added within layout 1: absent = empty
RECENT_EVENTS = 20  # the events a profile remembers (GetProfile's recent_events)


def decode_tail(buf, n_features: int, key: int, tail_at: int | None = None) -> dict:
    """The msgpack part, with every documented key present and of its type."""
    if tail_at is None:
        tail_at = tail_offset(buf, n_features)
    try:
        tail = msgpack.unpackb(buf[tail_at:], raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CorruptProfile(f"profile {key:016x}: undecodable attributes ({exc})") from None
    if not isinstance(tail, dict):
        raise CorruptProfile(f"profile {key:016x}: attributes are not a map")
    for name, kind in _TAIL_SHAPE.items():
        if not isinstance(tail.get(name), kind):
            raise CorruptProfile(f"profile {key:016x}: field {name!r} is missing or not a "
                                 f"{kind.__name__}")
    for name, kind in _TAIL_OPTIONAL.items():
        if name not in tail:
            tail[name] = kind()
        elif not isinstance(tail[name], kind):
            raise CorruptProfile(f"profile {key:016x}: field {name!r} is not a "
                                 f"{kind.__name__}")
    return tail


_INT64 = range(-(1 << 63), 1 << 63)
_UINT64 = range(0, 1 << 64)
_SCALARS = frozenset((str, float, int, bool))
_NUMBERS = frozenset((float, int))


def _check_values(tail: dict, key: int) -> None:
    """Every value of the documented type, so a record read here can be used and
    returned as it is (a value another writer put there is CorruptProfile, not a
    failure further on)."""
    what = None
    for name, v in tail["a"].items():
        if type(name) is not str or type(v) not in _SCALARS:
            what = f"attribute {name!r} is a {type(v).__name__}, not a string, number or bool"
    for name, v in tail["c"].items():
        if type(name) is not str or type(v) not in _NUMBERS:
            what = f"counter {name!r} is a {type(v).__name__}, not a number"
    for name in tail["s"]:
        if type(name) is not str:
            what = "segment names are not strings"
    for k in tail["m"]:
        if type(k) is not int or k not in _UINT64:
            what = "merged profile keys are not profile keys"
    if not all(type(e) is bytes for e in tail["e"]):
        what = "recent events are not packed events"
    if tail["t"] not in _INT64:
        what = f"created_at_ms {tail['t']} is out of range"
    if what is not None:
        raise CorruptProfile(f"profile {key:016x}: {what}")


def decode(buf, key: int) -> ProfileRecord:
    """A full, copied ProfileRecord from a stored value."""
    n_features = check_head(buf, key)
    tail = decode_tail(buf, n_features, key)
    identifiers = tail["i"]
    if not all(isinstance(i, list) and len(i) == 2 and all(isinstance(p, str) for p in i)
               for i in identifiers):
        raise CorruptProfile(f"profile {key:016x}: identifiers are not [kind, value] pairs")
    _check_values(tail, key)
    return ProfileRecord(
        key=key,
        features=feature_view(buf, n_features).astype(np.float32),
        attributes=tail["a"],
        counters=tail["c"],
        identifiers=[(k, v) for k, v in identifiers],
        segments=list(tail["s"]),
        merged_keys=list(tail["m"]),
        created_at_ms=tail["t"],
        updated_at_ms=HEAD.unpack_from(buf)[5],
        contacts=contacts_view(buf, n_features).copy(),
        recent=list(tail["e"]),
    )


def remember(recent: list[bytes], event: list) -> list[bytes]:
    """The recent events with one more ([type, at_ms, channel, offer_id, decision_id]),
    the oldest dropped past ``RECENT_EVENTS``."""
    recent = [*recent, msgpack.packb(event)]
    return recent[-RECENT_EVENTS:] if len(recent) > RECENT_EVENTS else recent


def recent_events(record: ProfileRecord) -> list[list]:
    """The recent events, unpacked: [[type, at_ms, channel, offer_id, decision_id], ...],
    oldest first. An entry that does not unpack as one is left out."""
    out = []
    for raw in record.recent:
        try:
            e = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException):
            continue
        if (type(e) is list and len(e) == 5 and type(e[1]) is int
                and all(type(e[i]) is str for i in (0, 2, 3, 4))):
            out.append(e)
    return out
