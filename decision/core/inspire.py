"""Inspire: decide for every member of a segment at once, and write the send file.

``run_campaign`` reads the profiles in key order, a chunk at a time (one read
transaction per chunk: servers keep serving and writing meanwhile; each chunk is a
consistent snapshot), keeps the segment's members, and ranks the whole chunk with
one call of ``kernels.decide.decide_batch``: the same catalog arrays, rules, contact
policies and model as ``Decide``, in parallel over customers (``prange``). Send
times follow the channel's pace (``decision.config.pace``) in each customer's time zone.

The file has one row per (customer, offer): ``customer_kind, customer_id,
profile_key, rank, offer_id, score, propensity, send_at (ISO 8601, UTC),
send_at_ms, decision_id``, as CSV (with a header) or JSON lines. A member with no
eligible offer gets no row. The decision id of a row is the campaign id, a dot and
the member's number; send it back with the outcome events like Decide's.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

import msgpack

from decision.errors import CorruptProfile, InvalidArgument, ResourceExhausted, Unavailable
from decision.store import layout
from decision.config.rules import string_id
from decision.core.respond import unknown_channel, unknown_placement
from kernels.decide import decide_batch

FORMATS = ("csv", "jsonl")
COLUMNS = ("customer_kind", "customer_id", "profile_key", "rank", "offer_id", "score",
           "propensity", "send_at", "send_at_ms", "decision_id")
CHUNK = 32_768  # profiles read per transaction (and ranked per kernel call)
_RUNNING = threading.Lock()  # numba's parallel runtime takes one caller at a time


class CampaignSpec(NamedTuple):
    segment: str
    channel: str
    placement: str = ""
    limit: int = 1
    context: Mapping = {}


class CampaignSummary(NamedTuple):
    path: Path
    members: int  # profiles in the segment
    decided: int  # members with at least one offer
    rows: int
    skipped: int  # unreadable profiles (corrupt), left out
    seconds: float
    catalog_version: str
    decided_at_ms: int
    campaign_id: str


def format_for(path: Path, fmt: str = "") -> str:
    """The file format: ``fmt`` if given, else from the file's extension."""
    fmt = fmt or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix, "")
    if fmt not in FORMATS:
        raise InvalidArgument(f"format: {', '.join(FORMATS)} (or a path ending in .csv or "
                              f".jsonl), got {fmt or path.suffix!r}")
    return fmt


def run_campaign(engine, spec: CampaignSpec, out: Path, fmt: str = "",
                 progress: bool = False, cancel=None) -> CampaignSummary:
    """Decide for every member of ``spec.segment`` and write ``out``; see the module.
    ``cancel``: an Event that, once set (a server shutting down), makes the campaign
    give up between chunks with UNAVAILABLE (no file is left)."""
    fmt = format_for(out, fmt)
    active = engine.active  # one catalog version for the whole campaign
    catalog = active.catalog
    if spec.segment not in catalog.segments.names:
        raise InvalidArgument(f"segment: unknown segment {spec.segment!r} (known: "
                              f"{', '.join(catalog.segments.names) or 'none declared'})")
    channel_bit = active.channel_bits.get(spec.channel)
    if channel_bit is None:
        unknown_channel(catalog, spec.channel)
    placement_bit = 0
    if spec.placement:
        placement_bit = active.placement_bits.get(spec.placement)
        if placement_bit is None:
            unknown_placement(catalog, spec.placement)
    if not 1 <= spec.limit <= engine.limits.max_offers:
        raise InvalidArgument(f"limit: must be between 1 and {engine.limits.max_offers}, "
                              f"got {spec.limit}")
    base = np.full(active.n_slots, math.nan)
    engine.responder.fill_context(active, spec.context, base)
    if not _RUNNING.acquire(blocking=False):
        raise ResourceExhausted("a campaign is already running in this server process; "
                                "retry when it has finished")
    try:
        with _gc_paused():
            return _run(engine, active, spec, out, fmt, channel_bit, placement_bit, base,
                        progress, cancel)
    finally:
        _RUNNING.release()


@contextlib.contextmanager
def _gc_paused():
    """A campaign holds tens of thousands of decoded profiles at a time (acyclic dicts
    and lists): the cyclic collector would rescan them over and over (measured: the
    read of 1M profiles took 32 s with it, 12 s without). Paused for the campaign, in
    the whole process (gc is per process): in a server, the request threads run
    without cycle collection meanwhile, which only delays freeing reference cycles
    (reference counting frees everything else as usual)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run(engine, active, spec, out, fmt, channel_bit, placement_bit, base, progress, cancel):
    from tqdm import tqdm

    started = time.perf_counter()
    catalog = active.catalog
    now = engine.clock()
    decided_ms = int(now * 1000)
    campaign_id = f"c{decided_ms & 0xFFFFFFFFFFFF:012x}"
    pace = catalog.pace[spec.channel]
    sends: dict = {}  # time zone -> (send_at, send_at_ms): one computation per zone
    reader = _ChunkReader(engine.store, active, spec.segment, base,
                          pace.timezone_attribute if pace.later else "")
    offer_ids = [o.id for o in catalog.offers]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    bar = tqdm(total=engine.store.count(), unit=" profiles", disable=not progress,
               desc=f"campaign {spec.segment} -> {spec.channel}", unit_scale=True)

    def rank(chunk: _Chunk):
        return decide_batch(catalog.code, catalog.consts, chunk.slots, active.visit,
                            chunk.features, chunk.contacts, chunk.contact_start, channel_bit,
                            placement_bit, now, spec.limit, active.policies)

    def rows_of(chunk: _Chunk, ranked, first: int) -> list[tuple]:
        chosen, score, prop, filled, _eligible = (a.tolist() for a in ranked)
        batch = []
        for c, (kind, value, key, zone) in enumerate(chunk.who):
            if not filled[c]:
                continue
            send = sends.get(zone)
            if send is None:
                t = pace.deliver_at(decided_ms, zone)
                send = sends[zone] = (_iso(t.deliver_at_ms), t.deliver_at_ms)
            decision_id = f"{campaign_id}.{first + c}"
            profile_key = f"{key:016x}"
            for r in range(filled[c]):
                batch.append((kind, value, profile_key, r + 1, offer_ids[chosen[c][r]],
                              score[c][r], prop[c][r], send[0], send[1], decision_id))
        return batch

    # a pipeline: the kernel (compiled, parallel, without the GIL) ranks chunk i while
    # this thread writes chunk i-1 and reads chunk i+1
    try:
        members, decided, rows = _write(tmp, fmt, reader, bar, rank, rows_of, cancel)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half file left behind
        raise
    finally:
        bar.close()
    tmp.replace(out)  # a reader of ``out`` never sees half a file
    return CampaignSummary(out, members, decided, rows, reader.skipped,
                           time.perf_counter() - started, catalog.version, decided_ms,
                           campaign_id)


def _write(tmp: Path, fmt: str, reader, bar, rank, rows_of, cancel) -> tuple[int, int, int]:
    """Read, rank and write every chunk; return (members, decided, rows)."""
    members = decided = rows = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f, \
            ThreadPoolExecutor(1, thread_name_prefix="decision-campaign") as pool:
        write = _writer(f, fmt)
        pending = None
        while True:
            if cancel is not None and cancel.is_set():
                raise Unavailable("the server is shutting down: the campaign stopped; run "
                                  "it again on a running server")
            chunk = reader.next()
            if chunk is not None:
                bar.update(chunk.scanned)
            ranking = (chunk, pool.submit(rank, chunk), members) \
                if chunk is not None and chunk.who else None
            if chunk is not None:
                members += len(chunk.who)
            if pending is not None:
                done, future, first = pending
                batch = rows_of(done, future.result(), first)
                decided += len({row[2] for row in batch})
                rows += len(batch)
                write(batch)
            pending = ranking
            if chunk is None:
                break
    return members, decided, rows


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def _writer(f, fmt: str):
    if fmt == "csv":
        w = csv.writer(f)
        w.writerow(COLUMNS)
        return w.writerows

    def write(batch) -> None:
        dumps = json.dumps
        f.writelines(dumps(dict(zip(COLUMNS, row)), separators=(",", ":")) + "\n"
                     for row in batch)
    return write


class _Chunk(NamedTuple):
    scanned: int
    who: list  # per member: (identifier kind, value, profile key, time zone or None)
    slots: np.ndarray  # float64[m, s]
    features: np.ndarray  # float32[m, F]
    contacts: np.ndarray  # int64[T, 2]
    contact_start: np.ndarray  # int64[m + 1]


class _ChunkReader:
    """The segment's members, ``CHUNK`` profiles (scanned) at a time, as kernel input."""

    def __init__(self, store, active, segment: str, base: np.ndarray, zone_attribute: str):
        self.store = store
        self.active = active
        self.segment = segment
        self.base = base
        self.zone_attribute = zone_attribute
        self.after: int | None = None  # last key read
        self.done = False
        self.skipped = 0

    def next(self) -> _Chunk | None:
        """The next chunk of members, read in one transaction (the byte layout is
        parsed here directly: this loop runs once per profile of the store)."""
        if self.done:
            return None
        active = self.active
        n_features = active.n_features
        feature_end = layout.HEAD_SIZE + 4 * n_features
        contacts_at = layout.contacts_offset(n_features)
        segment, zone_attribute = self.segment, self.zone_attribute
        feature_bytes = bytearray()
        contacts: list[bytes] = []
        starts = [0]
        who = []
        tails = []
        scanned = 0
        read_head = layout.read_head
        unpackb = msgpack.unpackb
        more = False
        with self.store.reader() as r:
            for key, buf in r.profiles(self.after):
                if scanned == CHUNK:
                    more = True
                    break
                self.after = key
                scanned += 1
                try:
                    _nf, nc, tail_at = read_head(buf, key, n_features)
                    tail = unpackb(buf[tail_at:])
                    segments = tail.get("s", [])
                    if type(segments) is not list:
                        raise ValueError("segments are not a list")
                    if segment not in segments:
                        continue
                    identifiers = tail["i"]
                    attributes = tail["a"]
                    if (type(attributes) is not dict or type(tail["c"]) is not dict
                            or type(identifiers) is not list):
                        raise ValueError("not the documented profile shape")
                    kind, value = identifiers[0] if identifiers else ("", "")
                    if type(kind) is not str or type(value) is not str:
                        raise ValueError("identifiers are not [kind, value] strings")
                except (CorruptProfile, ValueError, TypeError, KeyError, AttributeError,
                        msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                    self.skipped += 1  # corrupt or foreign: that customer is left out
                    continue
                feature_bytes += buf[layout.HEAD_SIZE:feature_end]
                if nc:
                    contacts.append(bytes(buf[contacts_at:tail_at]))
                starts.append(starts[-1] + nc)
                zone = attributes.get(zone_attribute) if zone_attribute else None
                who.append((kind, value, key, zone if type(zone) is str else None))
                tails.append(tail)
        if not more:
            self.done = True
        if not scanned:
            return None
        m = len(who)
        slots = np.empty((m, active.n_slots))
        slots[:] = self.base
        _fill_slots(active.profile_slots, tails, slots)
        features = np.frombuffer(feature_bytes, dtype="<f4").reshape(m, n_features)
        flat = (np.frombuffer(b"".join(contacts), dtype="<i8").reshape(-1, 2) if contacts
                else np.zeros((0, 2), dtype=np.int64))
        return _Chunk(scanned, who, slots, np.ascontiguousarray(features, dtype=np.float32),
                      np.ascontiguousarray(flat, dtype=np.int64),
                      np.array(starts, dtype=np.int64))


def _fill_slots(profile_slots, tails: list[dict], slots: np.ndarray) -> None:
    """The rule slots of every member, a column at a time (``segments.fill_slots``
    row by row, same conversions: a value of another type than declared is missing)."""
    nan = math.nan
    for namespace, name, slot, ftype in profile_slots:
        if namespace == "segment":
            column = [1.0 if name in t.get("s", ()) else 0.0 for t in tails]
        elif namespace == "counter":
            values = [t["c"].get(name, 0.0) for t in tails]
            column = [float(v) if type(v) is float or type(v) is int else nan for v in values]
        else:
            values = [t["a"].get(name) for t in tails]
            if ftype == "number":
                column = [float(v) if type(v) is float or type(v) is int else nan
                          for v in values]
            elif ftype == "bool":
                column = [float(v) if type(v) is bool else nan for v in values]
            else:
                column = [string_id(v) if type(v) is str else nan for v in values]
        slots[:, slot] = column
