"""Respond: one decision for an engaged customer, now (``Decide``, ``DecideBatch``).

``Responder.decide`` is the hot path, in the order of ``../shared/DESIGN.md``:

1. check the request against the active catalog (channel, placement, limit, context)
   and fill the rule slots that come from the context (``request``);
2. in one LMDB read transaction: resolve the identifier to a profile key, read the
   profile value in place, view its feature vector and contact history without
   copying, and take the rule slot values and time zone from the tail memo
   (``read_profile``);
3. one call into ``kernels.decide.decide_offers`` (eligibility, contact policies,
   propensity, arbitration, top-k, feature reasons) (``rank``);
4. the ``Decision`` around the kernel's array, with its delivery time (``answer``).

Per-request values are NamedTuples: immutable and several times cheaper to build than
frozen dataclasses. Nothing here imports gRPC: ``decision.edge.wire`` encodes a
``Decision`` for the wire, the CLI and the benchmarks read it as it is.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Mapping, NamedTuple

import numpy as np

from decision.config.catalog import Catalog, Offer
from decision.config.rules import string_id
from decision.core.experiments import Plan
from decision.core.prepared import COLD_START, N_FEATURE_REASONS, Prepared, Reason
from decision.core.recording import Recorder
from decision.core.requests import Identifier, IdentifierCheck, check_type
from decision.core.tails import VALUES, VERDICTS, ZONES
from decision.errors import DecisionError, InvalidArgument
from decision.settings import Limits
from decision.store import layout
from decision.store.database import ProfileStore
from decision.store.layout import AttributeValue
from kernels.decide import HEAD, decide_each, decide_explore, decide_offers

WARM_UP = "\x00warm-up"  # the customer of the engine's warm-up decisions: never recorded
from kernels.eligibility import eligible_mask

_random_bits = random.getrandbits  # decision ids must be unique, not secret (os.urandom: 1 us)


class DecideQuery(NamedTuple):
    customer: Identifier
    channel: str
    placement: str = ""
    limit: int | None = None  # None: the server's default
    context: Mapping[str, AttributeValue | None] = {}  # never mutated
    explain: bool = False  # also list the offers a contact policy removed, and why


class RankedOffer(NamedTuple):
    offer: Offer
    rank: int
    score: float
    propensity: float
    reasons: tuple[Reason, ...]
    probability: float = 1.0  # the policy's probability of this offer at this rank


class Decision:
    """One answer. The ranking stays as the kernel produced it: ``ranked``, float64[r,
    HEAD + 2 * N_FEATURE_REASONS], one row per offer, best first, ``[offer index, score,
    propensity, probability, feature indices..., feature weights...]`` (-1 = no
    feature), so front ends encode it without intermediate objects
    (``decision.edge.wire``); ``offers`` builds the ``RankedOffer`` view on demand."""

    __slots__ = ("decision_id", "cold_start", "eligible_count", "catalog_version",
                 "decided_at_ms", "prepared", "ranked", "deliver_at_ms", "timing", "removed",
                 "policy_removed_count", "experiment", "arm", "policy", "model_version")

    def __init__(self, decision_id: str, cold_start: bool, eligible_count: int,
                 decided_at_ms: int, prepared: Prepared, ranked: np.ndarray,
                 deliver_at_ms: int, timing: str, removed: tuple = (),
                 policy_removed_count: int = 0, experiment: str = "", arm: str = "",
                 policy: str = "greedy", model_version: str = ""):
        self.decision_id = decision_id
        self.cold_start = cold_start
        self.eligible_count = eligible_count
        self.catalog_version = prepared.catalog.version
        self.decided_at_ms = decided_at_ms
        self.prepared = prepared
        self.ranked = ranked
        self.deliver_at_ms = deliver_at_ms  # = decided_at_ms on a channel answered now
        self.timing = timing  # "now", or why later (decision.config.pace)
        self.removed = removed  # explain: (offer index, Reason) a policy removed
        # no offer left (eligible_count 0): how many in scope passed their rule but a
        # policy removed (the answer says why it is empty, explain or not); else 0
        self.policy_removed_count = policy_removed_count
        self.experiment = experiment  # "" when no experiment covers the channel
        self.arm = arm  # the customer's arm in it, or "control"
        self.policy = policy  # how the shown offers were chosen
        self.model_version = model_version  # "" when the catalog does not learn

    @property
    def offer_index(self) -> list[int]:
        return [int(i) for i in self.ranked[:, 0].tolist()]

    @property
    def removed_offers(self) -> tuple[tuple[Offer, Reason], ...]:
        offers = self.prepared.catalog.offers
        return tuple((offers[i], reason) for i, reason in self.removed)

    @property
    def offers(self) -> tuple[RankedOffer, ...]:
        prepared = self.prepared
        offers = prepared.catalog.offers
        names = prepared.catalog.feature_names
        n = N_FEATURE_REASONS
        ranked = []
        for r, row in enumerate(self.ranked.tolist()):
            i = int(row[0])
            if self.cold_start:
                reasons = (prepared.eligible_reason[i], COLD_START)
            else:
                reasons = (prepared.eligible_reason[i], *[
                    Reason("FEATURE", names[int(j)], w)
                    for j, w in zip(row[HEAD:HEAD + n], row[HEAD + n:HEAD + 2 * n]) if j >= 0])
            ranked.append(RankedOffer(offers[i], r + 1, row[1], row[2], reasons, row[3]))
        return tuple(ranked)


class Responder:
    """Decisions over one store; the catalog (a ``Prepared``) is given per call, so a
    request keeps the one it started with."""

    def __init__(self, store: ProfileStore, limits: Limits, identifier: IdentifierCheck,
                 clock: Callable[[], float], recorder: Recorder | None = None):
        self.store = store
        self.limits = limits
        self.identifier = identifier
        self.clock = clock
        self.recorder = recorder  # where decisions are recorded (catalogs that learn)

    def decide(self, active: Prepared, query: DecideQuery) -> Decision:
        kind, value, channel_bit, placement_bit, k, slots = self.request(active, query)
        now = self.clock()
        with self.store.reader() as reader:
            key = reader.resolve(kind, value)
            buf = None if key is None else reader.profile_buffer(key)
            if active.planner is not None:
                return self.plan_and_rank(active, query, channel_bit, placement_bit, k, slots,
                                          key, buf, now, f"{kind}\x1f{value}")
            return self.rank(active, query.channel, channel_bit, placement_bit, k, slots, key,
                             buf, now, query.explain)

    def decide_many(self, active: Prepared, queries: list[DecideQuery]) -> list[Decision]:
        """Several decisions at one instant, over one catalog version and one read
        transaction (a page with several placements, or several customers), ranked
        in one kernel call (``decide_each``). Every query is checked first; an
        invalid one fails the call, naming its index."""
        if not 1 <= len(queries) <= self.limits.max_batch:
            raise InvalidArgument(f"requests: 1 to {self.limits.max_batch} decisions per "
                                  f"call (max_batch), got {len(queries)}")
        checked = []
        for n, query in enumerate(queries):
            try:
                checked.append(self.request(active, query))
            except DecisionError as exc:
                raise type(exc)(f"requests[{n}].{exc}") from None
        now = self.clock()
        m = len(queries)
        features = np.zeros((m, active.n_features), dtype=np.float32)
        histories = []
        profiles = []  # per query: (buf is None, the profile's zone or None)
        # explain's removed offers; a catalog that learns or experiments: plans, records
        one_by_one = active.planner is not None or any(q.explain for q in queries)
        with self.store.reader() as reader:
            for c, (query, (kind, value, bit, place, k, slots)) in enumerate(zip(queries,
                                                                                 checked)):
                key = reader.resolve(kind, value)
                buf = None if key is None else reader.profile_buffer(key)
                if one_by_one:
                    profiles.append(
                        self.plan_and_rank(active, query, bit, place, k, slots, key, buf, now,
                                           f"{kind}\x1f{value}")
                        if active.planner is not None else
                        self.rank(active, query.channel, bit, place, k, slots, key, buf, now,
                                  query.explain))
                    continue
                x, contacts, zone, _ = self.read_profile(active, query.channel, key, buf,
                                                         slots)
                if buf is not None:
                    features[c] = x
                    if contacts.shape[0]:
                        histories.append((c, contacts))
                profiles.append((buf is None, zone))
            if one_by_one:
                return profiles
            starts = np.zeros(m + 1, dtype=np.int64)
            for c, h in histories:
                starts[c + 1] = h.shape[0]
            np.cumsum(starts, out=starts)
            # copied out of the map before the transaction ends; writable either way,
            # so the kernel has one signature
            flat = (np.concatenate([h for _, h in histories]) if histories
                    else np.zeros((0, 2), dtype=np.int64))
        slot_rows = np.array([slots for *_, slots in checked], dtype=np.float64)
        eligible, filled, ranked = decide_each(
            active.catalog.code, active.catalog.consts, slot_rows, active.visit,
            features, flat, starts, np.array([c[2] for c in checked], dtype=np.int64),
            np.array([c[3] for c in checked], dtype=np.int64), now,
            np.array([c[4] for c in checked], dtype=np.int64), N_FEATURE_REASONS,
            active.policies)
        none_left = active.has_policies and not eligible.all()
        eligible, filled = eligible.tolist(), filled.tolist()
        answers = [self.answer(active, query.channel, now, cold, zone, eligible[c],
                               ranked[c, :filled[c]], ())
                   for c, (query, (cold, zone)) in enumerate(zip(queries, profiles))]
        if none_left:  # rare: some answer is empty; say whether policies emptied it
            for c, n in enumerate(eligible):
                if not n:
                    answers[c].policy_removed_count = self._emptied_row(
                        active, slot_rows[c], features[c], flat[starts[c]:starts[c + 1]],
                        checked[c][2], checked[c][3], now)
        return answers

    def request(self, active: Prepared, query: DecideQuery) -> tuple:
        """Check a query against the catalog and the limits; return (identifier kind,
        value, channel bit, placement bit, k, the rule slots with the context filled:
        a list, turned into an array once the profile's slots are in)."""
        limits = self.limits
        kind, value = self.identifier(query.customer, "customer")
        channel_bit = active.channel_bits.get(query.channel)
        if channel_bit is None:
            unknown_channel(active.catalog, query.channel)
        placement_bit = 0
        if query.placement:
            placement_bit = active.placement_bits.get(query.placement)
            if placement_bit is None:
                unknown_placement(active.catalog, query.placement)
        k = limits.default_offers if query.limit is None else query.limit
        if not 1 <= k <= limits.max_offers:
            raise InvalidArgument(f"limit: must be between 1 and {limits.max_offers}, got {k}")
        slots = active.no_slots.copy()
        if query.context:
            self.fill_context(active, query.context, slots)
        return kind, value, channel_bit, placement_bit, k, slots

    def read_profile(self, active: Prepared, channel: str, key: int | None, buf,
                     slots: list) -> tuple:
        """From a profile value ``buf`` (None: cold start), read in place in a
        transaction the caller holds: (features, contacts, the customer's time zone
        when the channel's pace needs it, what ``active.tails`` keeps of the profile or
        None); the profile's rule slots go into ``slots``."""
        if buf is None:
            return active.zero_features, layout.NO_CONTACTS, None, None
        n_features, n_contacts, tail_at = layout.read_head(buf, key, active.n_features)
        x = layout.feature_view(buf, n_features)
        contacts = layout.NO_CONTACTS
        if n_contacts and active.has_policies:
            contacts = layout.contacts_view(buf, n_features, n_contacts)
        zone = kept = None
        if active.read_tail:
            kept = active.tails.read(buf, key, n_features, tail_at)
            for slot, v in zip(active.tails.slot_index, kept[VALUES]):
                slots[slot] = v
            z = active.zone_index.get(channel)
            if z is not None:
                zone = kept[ZONES][z]
        return x, contacts, zone, kept

    def rank(self, active: Prepared, channel: str, channel_bit: int, placement_bit: int,
             k: int, slots: list, key: int | None, buf, now: float,
             explain: bool = False) -> Decision:
        """Decide over a profile value ``buf`` (None: cold start) read in a transaction
        the caller holds: the kernel call and the answer around it."""
        catalog = active.catalog
        x, contacts, zone, kept = self.read_profile(active, channel, key, buf, slots)
        slots = np.array(slots, dtype=np.float64)
        if kept is None:  # no profile, or no rule reads one
            verdict = active.cold_verdicts.copy()
        elif kept[VERDICTS] is None:  # this profile version's first decision
            verdict = active.no_verdicts.copy()
        else:
            verdict = kept[VERDICTS].copy()
        eligible, ranked, blocked = decide_offers(
            catalog.code, catalog.consts, slots, active.visit, x, channel_bit, placement_bit, now,
            k, N_FEATURE_REASONS, contacts, active.policies, verdict)
        if kept is not None and kept[VERDICTS] is None:
            active.tails.keep_verdicts(
                key, kept, np.where(active.profile_only, verdict, -1).astype(np.int8))
        if (explain or not eligible) and active.has_policies:  # rare: explain, or no offer
            removed, emptied = self._removed(active, slots, channel_bit, placement_bit, now,
                                             blocked, explain, eligible)
            return self.answer(active, channel, now, buf is None, zone, eligible, ranked,
                               removed, emptied)
        return self.answer(active, channel, now, buf is None, zone, eligible, ranked, ())

    def plan_and_rank(self, active: Prepared, query: DecideQuery, channel_bit: int,
                      placement_bit: int, k: int, slots: list, key: int | None, buf,
                      now: float, identity: str) -> Decision:
        """``rank`` for a catalog that learns or runs experiments: the customer's plan
        (control group, arm, exploration, model: ``decision.core.experiments``), the
        kernel it calls for, the shadow arm if any, and the decision's record
        (``decision.core.recording``, off the request path)."""
        channel = query.channel
        plan = active.planner.plan_for(channel, key, identity)
        x, contacts, zone, kept = self.read_profile(active, channel, key, buf, slots)
        slots = np.array(slots, dtype=np.float64)
        if kept is None:
            verdict = active.cold_verdicts.copy()
        elif kept[VERDICTS] is None:
            verdict = active.no_verdicts.copy()
        else:
            verdict = kept[VERDICTS].copy()
        eligible, ranked, support = self._run(active, plan, slots, x, channel_bit,
                                              placement_bit, now, k, contacts, verdict)
        if kept is not None and kept[VERDICTS] is None:
            active.tails.keep_verdicts(
                key, kept, np.where(active.profile_only, verdict, -1).astype(np.int8))
        if plan.empty:
            ranked = ranked[:0]
        decision = self.answer(active, channel, now, buf is None, zone, eligible, ranked, (),
                               0, plan)
        if self.recorder is not None and query.customer.value != WARM_UP:
            shadow = plan.shadow
            shadow_ranked = None if shadow is None else self._run(
                active, shadow, slots, x, channel_bit, placement_bit, now, k, contacts,
                verdict)[1]
            self.recorder.record(decision, plan, key or 0, identity, channel, query.placement,
                                 x, shadow_ranked, support)
        return decision

    @staticmethod
    def _run(active: Prepared, plan: Plan, slots, x, channel_bit, placement_bit, now, k,
             contacts, verdict):
        """The kernel a plan calls for: ``decide_offers`` when greedy, else
        ``decide_explore``; (eligible count, ranked, eligible set: the exploring kernel's
        flags by catalog index, None when greedy)."""
        catalog = active.catalog
        if plan.greedy:
            eligible, ranked, _ = decide_offers(
                catalog.code, catalog.consts, slots, plan.visit, x, channel_bit, placement_bit,
                now, k, N_FEATURE_REASONS, contacts, active.policies, verdict)
            return eligible, ranked, None
        eligible, ranked, _, support = decide_explore(
            catalog.code, catalog.consts, slots, plan.visit, x, channel_bit, placement_bit, now,
            k, N_FEATURE_REASONS, contacts, active.policies, verdict, plan.var_w, plan.var_b,
            plan.code, plan.param)
        return eligible, ranked, support

    @staticmethod
    def answer(active: Prepared, channel: str, now: float, cold: bool, zone,
               eligible: int, ranked: np.ndarray, removed: tuple,
               policy_removed_count: int = 0, plan: Plan | None = None) -> Decision:
        """The ``Decision`` for the kernel's ``ranked`` rows, with its delivery time."""
        decided_ms = int(now * 1000)
        deliver_at_ms, timing = decided_ms, "now"
        pace = active.later.get(channel)
        if pace is not None:
            deliver_at_ms, timing = pace.deliver_at(decided_ms, zone)
        if plan is None:
            return Decision(decision_id(now), cold, eligible, decided_ms, active, ranked,
                            deliver_at_ms, timing, removed, policy_removed_count)
        return Decision(decision_id(now), cold, eligible, decided_ms, active, ranked,
                        deliver_at_ms, timing, removed, policy_removed_count, plan.experiment,
                        plan.arm, plan.policy, plan.model_version)

    def _removed(self, active: Prepared, slots, channel_bit, placement_bit, now,
                 blocked: np.ndarray, explain: bool, eligible: int) -> tuple[tuple, int]:
        """The offers in scope whose rule held but a policy removed (``blocked``: the
        kernel's): (with ``explain``, at most ``max_offers`` of them with the policy's
        reason, in catalog order, else (); when no offer is left (``eligible`` 0), how
        many there are, else 0). A rare path: explain, or an empty answer."""
        catalog = active.catalog
        passed = eligible_mask(catalog.code, catalog.programs, catalog.consts, slots,
                               catalog.offer_masks, catalog.offer_window, channel_bit,
                               placement_bit, now)
        hits = np.nonzero(passed & (blocked >= 0))[0]
        removed = ()
        if explain:
            removed = tuple((int(i), active.policy_reasons[blocked[i]])
                            for i in hits[:self.limits.max_offers])
        return removed, 0 if eligible else int(hits.shape[0])

    def _emptied_row(self, active: Prepared, slots: np.ndarray, x: np.ndarray,
                     contacts: np.ndarray, channel_bit: int, placement_bit: int,
                     now: float) -> int:
        """``policy_removed_count`` of a batch row left with no offer: ``decide_each``
        keeps no ``blocked`` array, so the row is decided again alone
        (``decide_offers``, same inputs, k = 1) for it. A rare path: an empty answer
        over a catalog with policies. ``x`` and ``contacts`` are made read-only, as the
        views over the map ``rank`` passes are, so the kernel's compiled signature is
        reused."""
        catalog = active.catalog
        x, contacts = x.view(), contacts.view()
        x.flags.writeable = contacts.flags.writeable = False
        _, _, blocked = decide_offers(
            catalog.code, catalog.consts, slots, active.visit, x, channel_bit, placement_bit,
            now, 1, N_FEATURE_REASONS, contacts, active.policies, active.no_verdicts.copy())
        return self._removed(active, slots, channel_bit, placement_bit, now, blocked, False,
                             0)[1]

    def fill_context(self, active: Prepared, context, slots) -> None:
        """Check the request's context and put the values rules read into ``slots``
        (per key, the catalog's type and slot are looked up once: ``context_plan``)."""
        limits = self.limits
        if len(context) > limits.max_context_entries:
            raise InvalidArgument(
                f"context: {len(context)} entries, at most {limits.max_context_entries} allowed"
            )
        max_bytes = limits.max_string_bytes
        short = max_bytes // 4  # this many characters are at most max_bytes in UTF-8
        plan = active.context_plan
        for key, v in context.items():
            if len(key) > short and len(key.encode()) > max_bytes:
                raise InvalidArgument(
                    f"context: key {key[:32]!r}... longer than {max_bytes} bytes")
            t = type(v)
            if t is str and len(v) > short and len(v.encode()) > max_bytes:
                raise InvalidArgument(f"context[{key!r}]: value longer than {max_bytes} bytes")
            entry = plan.get(key)
            if entry is None or v is None:
                continue  # undeclared keys are ignored; no value means missing
            ftype, slot = entry
            if ftype == "string":
                if t is not str:
                    check_type(v, ftype, f"context[{key!r}]")
                value = string_id(v)
            elif ftype == "number":
                if t is not float and t is not int:
                    check_type(v, ftype, f"context[{key!r}]")
                if not math.isfinite(v):
                    raise InvalidArgument(f"context[{key!r}]: must be a finite number, got {v}")
                value = float(v)
            else:
                if t is not bool:
                    check_type(v, ftype, f"context[{key!r}]")
                value = 1.0 if v else 0.0
            if slot >= 0:
                slots[slot] = value


def unknown_channel(catalog: Catalog, channel: str):
    raise InvalidArgument(
        f"channel: unknown channel {channel!r} (known: {', '.join(catalog.channels)})")


def unknown_placement(catalog: Catalog, placement: str):
    raise InvalidArgument(
        f"placement: unknown placement {placement!r} "
        f"(known: {', '.join(catalog.placements) or 'none declared'})")


def decision_id(now: float) -> str:
    """28 hex characters: 48 bits of milliseconds (sortable by time) + 64 random bits."""
    return f"{int(now * 1000) & 0xFFFFFFFFFFFF:012x}{_random_bits(64):016x}"
