"""The analytical export: decision records and outcomes as Parquet files.

``decision export`` (and every ``decision report`` / ``decision whatif``, which export
what is new first) copies what the store learned since the last run into an export
directory, one new part file per table and run (incremental: a cursor per table in
``state.json``), or, with a time range, the decisions of that range into a directory of
their own. DuckDB reads the directory (``read_parquet('dir/decisions/*.parquet')``), as
do pandas, Spark and a warehouse's loaders.

Tables (one folder each, ``part-NNNNNN.parquet``):

``decisions``: one row per decision
    decision_id VARCHAR, decided_ms BIGINT, profile_key UBIGINT (0: no profile yet),
    owner UBIGINT (what erasure files it under: the profile key, or 0xFF... for a
    decision made before the customer had a profile), channel, placement,
    catalog_version, model_version, experiment, arm ("control" for the control group),
    policy, shadow_arm VARCHAR, eligible INTEGER, shown SMALLINT, features FLOAT[] (the
    customer's features as the kernel read them, in the catalog's order), support BLOB
    (the eligible offers as a bit mask over the catalog version's offers, when the
    policy explored; empty when greedy)
``shown``: one row per offer a decision returned (the shadow arm's are left out)
    decision_id, owner, offer_id VARCHAR, offer_index SMALLINT (in its catalog version),
    rank SMALLINT (1 = best), score, propensity, probability (the policy's probability
    of that choice, given the slots above), value, lever DOUBLE
``outcomes``: one row per outcome event that named a decision
    cursor UBIGINT, decision_id, offer_id, kind (impression, click, conversion,
    dismissal), at_ms BIGINT, channel, revenue DOUBLE, profile_key UBIGINT
``segments``: one row per segment entered or left
    profile_key UBIGINT, segment VARCHAR, entered BOOLEAN, at_ms BIGINT
``merges``: one row per profile folded into another
    at_ms BIGINT, survivor UBIGINT, merged UBIGINT
``offers``: per catalog version, its offers in record order
    catalog_version, offer_index SMALLINT, offer_id, value, lever
``catalogs``: per catalog version, what a replay must find unchanged in a candidate
    catalog_version, facts VARCHAR (JSON: the feature list, a digest of each offer's
    eligibility and of the contact policies)

Decisions are exported up to ``SETTLE_MS`` before now: a record lands a few ms after its
decision (written off the request path), so a later run never misses one.

Erasure reaches the export the server manages (``<data dir>/exports``, the one
``decision export`` / ``report`` / ``whatif`` keep up to date): ``ForgetCustomer`` logs
the profile keys and record owners it erased in the store, in the erasure's own
transaction (``ProfileStore.log_erasure``), then, before it answers, removes them from
every part file (``apply_erasures``: a part that holds any of those rows is rewritten
without them, DuckDB ``COPY ... WHERE NOT ...`` to a temporary file and an atomic
rename) and drops the log entry. A crash between the two leaves the entry, which the
next export run applies. The store no longer holds her records, so no later export
brings them back. A one-off export to a directory of your own (a time range) is yours
to manage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq

from decision.store.database import ProfileStore
from decision.store.records import SEGMENT_ENTER, SEGMENT_LEAVE, decision_columns

SCHEMA_VERSION = 1
SETTLE_MS = 5_000
PAGE = 50_000  # records decoded per step

DECISIONS = pa.schema([
    ("decision_id", pa.string()), ("decided_ms", pa.int64()), ("profile_key", pa.uint64()),
    ("owner", pa.uint64()), ("channel", pa.string()), ("placement", pa.string()),
    ("catalog_version", pa.string()), ("model_version", pa.string()),
    ("experiment", pa.string()), ("arm", pa.string()), ("policy", pa.string()),
    ("shadow_arm", pa.string()), ("eligible", pa.int32()), ("shown", pa.int16()),
    ("features", pa.list_(pa.float32())), ("support", pa.binary())])
SHOWN = pa.schema([
    ("decision_id", pa.string()), ("owner", pa.uint64()), ("offer_id", pa.string()),
    ("offer_index", pa.int16()), ("rank", pa.int16()), ("score", pa.float64()),
    ("propensity", pa.float64()), ("probability", pa.float64()), ("value", pa.float64()),
    ("lever", pa.float64())])
OUTCOMES = pa.schema([
    ("cursor", pa.uint64()), ("decision_id", pa.string()), ("offer_id", pa.string()),
    ("kind", pa.string()), ("at_ms", pa.int64()), ("channel", pa.string()),
    ("revenue", pa.float64()), ("profile_key", pa.uint64())])
SEGMENTS = pa.schema([("profile_key", pa.uint64()), ("segment", pa.string()),
                      ("entered", pa.bool_()), ("at_ms", pa.int64())])
MERGES = pa.schema([("at_ms", pa.int64()), ("survivor", pa.uint64()),
                    ("merged", pa.uint64())])
OFFERS = pa.schema([("catalog_version", pa.string()), ("offer_index", pa.int16()),
                    ("offer_id", pa.string()), ("value", pa.float64()),
                    ("lever", pa.float64())])
CATALOGS = pa.schema([("catalog_version", pa.string()), ("facts", pa.string())])
TABLES = {"decisions": DECISIONS, "shown": SHOWN, "outcomes": OUTCOMES,
          "segments": SEGMENTS, "merges": MERGES, "offers": OFFERS, "catalogs": CATALOGS}
# the columns erasure matches: record owners, and profile keys
ERASE_BY = {"decisions": ("owner", "profile_key"), "shown": ("owner",),
            "outcomes": ("profile_key",), "segments": ("profile_key",),
            "merges": ("survivor", "merged")}


class ExportError(ValueError):
    """A bad export request (the message says what to fix)."""


@dataclass
class State:
    """Where the incremental export stands (``state.json``)."""

    decisions_after: str = ""  # the last decision id exported
    decisions_to_ms: int = 0  # decisions before this are exported
    outcome_cursor: int = 1
    trigger_cursor: int = 1
    merges_ms: int = 0
    part: int = 0
    versions: list[str] = field(default_factory=list)  # catalog versions whose offers are out

    @classmethod
    def load(cls, directory: Path) -> State:
        path = directory / "state.json"
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        if raw.get("schema") != SCHEMA_VERSION:
            raise ExportError(f"{directory}: an export of another schema version "
                              f"({raw.get('schema')}); export to a new directory")
        raw.pop("schema")
        return cls(**raw)

    def save(self, directory: Path) -> None:
        tmp = directory / "state.json.tmp"
        tmp.write_text(json.dumps({"schema": SCHEMA_VERSION, **self.__dict__}, indent=1))
        os.replace(tmp, directory / "state.json")


@dataclass
class Exported:
    """What one run wrote: rows per table, erased rows, and the seconds it took."""

    rows: dict[str, int]
    erased: int
    seconds: float
    directory: Path


def export(store: ProfileStore, directory: Path, *, from_ms: int | None = None,
           to_ms: int | None = None, now_ms: int | None = None,
           settle_ms: int = SETTLE_MS) -> Exported:
    """Export what is new since the last run into ``directory`` (created if need be);
    with ``from_ms`` / ``to_ms``, only the decisions of that range and their outcomes,
    into a directory of their own (a one-off export: not incremental). Decisions of the
    last ``settle_ms`` wait for the next run (their records may be in flight; 0 when no
    server writes the store)."""
    started = time.perf_counter()
    directory = Path(directory)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ranged = from_ms is not None or to_ms is not None
    if ranged:
        from_ms, to_ms = check_range(from_ms or 0, now_ms if to_ms is None else to_ms)
        if (directory / "state.json").exists() or any(directory.glob("*/part-*")):
            raise ExportError(f"{directory}: not empty; a time range goes to a directory of "
                              f"its own (--out, a new or empty one)")
    directory.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        (directory / name).mkdir(exist_ok=True)
    if not ranged and not (directory / "state.json").exists():
        State().save(directory)  # a managed export from now on: erasures reach it
    erased = 0 if ranged else apply_erasures(store, directory)
    with _locked(directory):
        rows = _export(store, directory, ranged, from_ms, to_ms, now_ms - settle_ms)
    return Exported(rows, erased, time.perf_counter() - started, directory)


def _export(store: ProfileStore, directory: Path, ranged: bool, from_ms, to_ms,
            settled_ms: int) -> dict[str, int]:
    state = State() if ranged else State.load(directory)
    state.part += 1
    for table in TABLES:  # what a run that stopped before saving its state left
        for left in (directory / table).glob(f"part-{state.part:06d}-*"):
            left.unlink()
    rows = dict.fromkeys(TABLES, 0)
    upper = min(settled_ms, to_ms) if ranged else settled_ms
    lower = from_ms if ranged else 0
    ids = _export_decisions(store, directory, state, lower, upper, rows)
    _export_outcomes(store, directory, state, rows, ids if ranged else None)
    if not ranged:
        _export_segments(store, directory, state, rows)
        _export_merges(store, directory, state, rows)
        state.decisions_to_ms = max(state.decisions_to_ms, upper)
        state.save(directory)
    return rows


def check_range(from_ms: int, to_ms: int) -> tuple[int, int]:
    """A time range [from, to) in ms, or ExportError naming what is wrong."""
    if to_ms == from_ms:
        raise ExportError("the time range is empty (--from equals --to): give an end after "
                          "the start")
    if to_ms < from_ms:
        raise ExportError("the time range is inverted (--to is before --from): swap them")
    return from_ms, to_ms


def _write(directory: Path, table: str, state: State, columns: dict) -> int:
    """One part file of ``table`` from ``columns`` (name -> list or array); its rows."""
    data = pa.table(columns, schema=TABLES[table])
    if data.num_rows:
        path = directory / table / f"part-{state.part:06d}-{_suffix(directory, table)}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(data, tmp, compression="zstd")
        os.replace(tmp, path)
    return data.num_rows


def _suffix(directory: Path, table: str) -> int:
    """A number that keeps part names unique when one run writes several (paging)."""
    return len(list((directory / table).glob("part-*.parquet")))


def _export_decisions(store: ProfileStore, directory: Path, state: State, from_ms: int,
                      to_ms: int, rows: dict) -> set[str]:
    """Page through the records decided in [from, to) after the last exported id; write
    them (decisions, shown) and the offer tables of new catalog versions."""
    ids: set[str] = set()
    tables: dict[str, list | None] = {}
    after = state.decisions_after.encode()
    while True:
        page = store.decision_values(from_ms, to_ms, after, PAGE)
        if not page:
            break
        for version in {_version_of(v) for _, v in page} - tables.keys():
            tables[version] = store.offer_table(version)
        d, s = decision_columns(page, tables.get)
        offsets, values = d["features"]
        d["features"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        rows["decisions"] += _write(directory, "decisions", state, d)
        rows["shown"] += _write(directory, "shown", state, s)
        ids.update(d["decision_id"])
        after = page[-1][0]
        state.decisions_after = after.decode()
    facts = {v: store.catalog_facts(v) for v in tables if v not in state.versions}
    # a version is exported once its offers and facts are both known (a server that
    # recorded it before it kept facts writes them at its next start)
    new = [v for v, f in facts.items() if tables[v] is not None and f is not None]
    if new:
        cols = {"catalog_version": [], "offer_index": [], "offer_id": [], "value": [],
                "lever": []}
        for v in new:
            for i, (oid, value, lever) in enumerate(tables[v]):
                for name, x in zip(cols, (v, i, oid, value, lever)):
                    cols[name].append(x)
        rows["offers"] += _write(directory, "offers", state, cols)
        rows["catalogs"] += _write(directory, "catalogs", state, {
            "catalog_version": new, "facts": [json.dumps(facts[v]) for v in new]})
        state.versions += new
    return ids


def _version_of(value: bytes) -> str:
    n = int.from_bytes(value[:2], "little")
    return msgpack.unpackb(value[2:2 + n])[2]


def _export_outcomes(store: ProfileStore, directory: Path, state: State, rows: dict,
                     only: set[str] | None) -> None:
    """The outcomes log from the cursor on (or, for a ranged export, those naming the
    decisions it exported)."""
    names = OUTCOMES.names
    cursor = 1 if only is not None else state.outcome_cursor
    while True:
        with store.reader() as r:
            batch = store.outcomes_from(r._txn, cursor, PAGE)
        if not batch:
            break
        cols = {n: [] for n in names}
        for position, o in batch:
            if only is None or o.decision_id in only:
                for n, x in zip(names, (position, o.decision_id, o.offer_id, o.kind, o.at_ms,
                                        o.channel, o.revenue, o.profile_key)):
                    cols[n].append(x)
        rows["outcomes"] += _write(directory, "outcomes", state, cols)
        cursor = batch[-1][0] + 1
    if only is None:
        state.outcome_cursor = cursor


def _export_segments(store: ProfileStore, directory: Path, state: State, rows: dict) -> None:
    """Segment changes from the trigger log (membership at a decision's time is the
    last change before it)."""
    cursor = state.trigger_cursor
    while True:
        batch = store.triggers_from(cursor, PAGE)
        if not batch:
            break
        cols = {n: [] for n in SEGMENTS.names}
        for t in batch:
            if t.kind in (SEGMENT_ENTER, SEGMENT_LEAVE):
                for n, x in zip(SEGMENTS.names, (t.profile_key, t.name,
                                                 t.kind == SEGMENT_ENTER, t.at_ms)):
                    cols[n].append(x)
        rows["segments"] += _write(directory, "segments", state, cols)
        cursor = batch[-1].cursor + 1
    state.trigger_cursor = cursor


def _export_merges(store: ProfileStore, directory: Path, state: State, rows: dict) -> None:
    cols = {n: [] for n in MERGES.names}
    last = state.merges_ms
    # inclusive of the last run's ms (a merge committed later at that ms is not missed;
    # a row exported twice is harmless: readers take distinct rows)
    for at, survivor, merged in store.merges_since(last):
        for k in merged:
            for n, x in zip(MERGES.names, (at, survivor, k)):
                cols[n].append(x)
        last = max(last, at)
    rows["merges"] += _write(directory, "merges", state, cols)
    state.merges_ms = last


def apply_erasures(store: ProfileStore, directory: Path) -> int:
    """Remove the rows of the customers erased since the last application from every
    part file under ``directory``, then drop those erasures from the store's log;
    return the rows removed. ``ForgetCustomer`` calls it on the server's export
    directory; every export run does too (an erasure whose rewrite a crash cut short is
    applied again: it is idempotent)."""
    erasures = store.pending_erasures()
    if not erasures:
        return 0
    removed = 0
    if (directory / "state.json").exists():
        with _locked(directory):
            removed = _erase(directory, {k for _, ks, _ in erasures for k in ks},
                             {int.from_bytes(o, "big") for _, _, os_ in erasures for o in os_})
    store.drop_erasures([e for e, _, _ in erasures])
    return removed


def _erase(directory: Path, keys: set[int], owners: set[int]) -> int:
    import duckdb

    removed = 0
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE gone_keys (k UBIGINT)")
    con.execute("CREATE TEMP TABLE gone_owners (k UBIGINT)")
    con.executemany("INSERT INTO gone_keys VALUES (?)", [(k,) for k in sorted(keys)])
    con.executemany("INSERT INTO gone_owners VALUES (?)", [(k,) for k in sorted(owners)])
    for table, columns in ERASE_BY.items():
        cond = " OR ".join(
            f"{c} IN (SELECT k FROM {'gone_owners' if c == 'owner' else 'gone_keys'})"
            for c in columns)
        for part in sorted((directory / table).glob("part-*.parquet")):
            src = str(part).replace("'", "''")
            hit = con.execute(f"SELECT count(*) FROM read_parquet('{src}') WHERE {cond}"
                              ).fetchone()[0]
            if not hit:
                continue
            tmp = part.with_suffix(".tmp")
            con.execute(f"COPY (SELECT * FROM read_parquet('{src}') WHERE NOT ({cond})) "
                        f"TO '{tmp!s}' (FORMAT parquet, COMPRESSION zstd)")
            os.replace(tmp, part)
            removed += hit
    con.close()
    return removed


@contextlib.contextmanager
def _locked(directory: Path):
    """One writer of an export directory at a time (an export run, an erasure)."""
    with open(directory / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
