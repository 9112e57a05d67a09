"""Learning from outcomes: labelled examples, the learner, and the models served.

The loop (``../shared/DESIGN.md``, "The learning loop")::

    Track(outcome, decision_id, offer_id) --(same txn as the event)--> ``outcomes`` log
    learner (one per store: a lease in LMDB), every cycle, in ONE write transaction:
        read the log from its cursor; join each outcome to its decision record;
        impression -> a label waiting for the channel's response window;
        the label outcome (click, or conversion) within the window -> a positive
        example; a dismissal -> a negative one; a window that closes -> negative;
        the examples -> ``kernels.bayes.learn`` (features of the decision, not of
        today's profile) -> the touched posteriors, the cursor, the counters and a
        new ``model_version``
    every process: sees the new version (``ModelFollower``), folds the posteriors
    into serving arrays (``kernels.bayes.fold``) and swaps a reference.

A killed learner loses and double-counts nothing: the cursor, the labels and the
posteriors change in the same transaction, so a cycle is applied whole or not at
all, and the next holder of the lease (after ``LEASE_MS``) starts from the last
commit.

Delayed responses. A negative label is given only when the window closes, never
earlier, so a slow responder inside the window is a positive like a fast one: the
label of an impression does not depend on how fast its response came, only whether
it came within the window. A positive is learned as soon as it arrives (it cannot be
taken back), a negative when its window closes; so at any moment the model has seen
the positives of the last window before their negatives. The bias that leaves is
bounded by one window of examples and vanishes as the window closes; a channel whose
window is long (conversions in days) should label on a short one (``label =
"click"``), which is what the defaults do.

Outcomes that teach nothing are counted: a duplicate (a second impression of the same
offer in the same decision, a second response), a late response (after the window
closed), an unknown decision (none recorded, or erased, or expired).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import deque
from typing import Callable, NamedTuple

import numpy as np

from decision.config.catalog import Catalog
from decision.config.learning import Learning
from decision.store.database import ProfileStore
from decision.store.records import Label, ModelEntry, OutcomeRecord
from kernels.bayes import auc as auc_of
from kernels.bayes import fold, learn, offer_prior, prior_from_model
from kernels.scoring import LOGIT_MAX, sigmoid

log = logging.getLogger("decision.core.learning")

LEASE_MS = 3000  # a learner that stops renewing its lease is replaced after this
MAX_OUTCOMES = 20_000  # per cycle (one write transaction)
MAX_EXPIRED = 20_000
UNKNOWN_GRACE_MS = 10_000  # a decision may be recorded this long after its outcome
AUC_RECENT = 1000  # examples per offer kept to compute the AUC on
SHARED = "shared"
CLEANUP_EVERY_S = 5.0
EXPIRE_PER_CLEANUP = 10_000  # per CLEANUP_EVERY_S: 2,000/s sustained, in short transactions


def signature(catalog: Catalog) -> str:
    """The feature lists the models are learned over: when they change, the models
    start afresh (an offer keeps its state by id otherwise)."""
    text = "\x1f".join(catalog.feature_names) + "\x1e" + "\x1f".join(
        catalog.model.offer_features)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def model_name(offer_id: str, group: str) -> str:
    return f"{offer_id}\x1f{group}"


class Served(NamedTuple):
    """The learned models as the decision path reads them, per channel group: the
    visit tuple with the posterior means folded into weights and bias, and the
    logit variance arrays (visit order) for Thompson sampling."""

    version: str
    visits: tuple
    var_w: tuple
    var_b: tuple
    examples: tuple  # labelled examples learned per group (SquareCB's schedule)


class Posterior:
    """The posteriors of one catalog: the shared model and every offer's own, per
    channel group, with their evidence."""

    def __init__(self, catalog: Catalog):
        learning: Learning = catalog.learning
        model = catalog.model
        self.catalog = catalog
        self.signature = signature(catalog)
        f, n, g = len(catalog.feature_names), len(catalog.offers), len(learning.groups)
        self.shared_mean, self.shared_prec = prior_from_model(
            model.intercept, model.customer_weights, model.offer_weights, model.interactions,
            learning.shared_prior_variance)
        self.shared_prior = self.shared_prec.copy()
        self.offer_prior = 1.0 / learning.prior_variance
        self.offer_mean, self.offer_prec = offer_prior(g, n, f, learning.prior_variance)
        self.examples = np.zeros((g, n), dtype=np.int64)
        self.positives = np.zeros((g, n), dtype=np.int64)
        self.updated_ms = np.zeros((g, n), dtype=np.int64)
        self.feature_sum = np.zeros((g, n, f))
        self.shared_examples = 0
        self.shared_updated_ms = 0
        self.recent = {}  # (group, offer) -> deque of (predicted before learning, label)
        self.auc = np.zeros((g, n))
        self.auc_examples = np.zeros((g, n), dtype=np.int64)

    def load(self, entries: dict[str, ModelEntry]) -> int:
        """Take the stored posteriors that match this catalog's features; return how
        many were left out because their feature lists changed (they start afresh)."""
        stale = 0
        shared = entries.get(SHARED)
        if shared is not None:
            if shared.signature != self.signature:
                stale += 1
            else:
                self.shared_mean = np.frombuffer(shared.mean, dtype=np.float64).copy()
                self.shared_prec = np.frombuffer(shared.precision, dtype=np.float64).copy()
                self.shared_examples = shared.examples
                self.shared_updated_ms = shared.updated_ms
        group_index = {name: g for g, name in enumerate(self.catalog.learning.groups)}
        offer_index = self.catalog.offer_index
        for name, entry in entries.items():  # the stored ones only: O(offers learned)
            offer_id, _, group = name.partition("\x1f")
            g, i = group_index.get(group), offer_index.get(offer_id)
            if name == SHARED or g is None or i is None:
                continue  # the shared model (above), or an offer or group since removed
            if entry.signature != self.signature:
                stale += 1
                continue
            self.offer_mean[g, i] = np.frombuffer(entry.mean, dtype=np.float64)
            self.offer_prec[g, i] = np.frombuffer(entry.precision, dtype=np.float64)
            self.examples[g, i] = entry.examples
            self.positives[g, i] = entry.positives
            self.updated_ms[g, i] = entry.updated_ms
            if entry.feature_sum:
                self.feature_sum[g, i] = np.frombuffer(entry.feature_sum, dtype=np.float64)
            self.auc[g, i] = entry.auc
            self.auc_examples[g, i] = entry.auc_examples
        return stale

    def forget(self, offers: set[tuple[int, int]], now_ms: int) -> None:
        """Exponential forgetting: the evidence of each model about to learn (the offers'
        own and the shared one) counts 2^(-elapsed / half-life) of what it did, i.e.
        its precision beyond the prior's shrinks by that factor (the mean stays), so
        that a world that changed (a drift) is learned again. Applied lazily, at each
        model's next update, from the time of its last one."""
        half_life = self.catalog.learning.half_life_ms
        if not half_life:
            return
        if self.shared_updated_ms:
            keep = 0.5 ** (max(0, now_ms - self.shared_updated_ms) / half_life)
            self.shared_prec[:] = self.shared_prior + (self.shared_prec - self.shared_prior) * keep
        for g, i in offers:
            if self.updated_ms[g, i]:
                keep = 0.5 ** (max(0, now_ms - int(self.updated_ms[g, i])) / half_life)
                self.offer_prec[g, i] = self.offer_prior + (self.offer_prec[g, i]
                                                            - self.offer_prior) * keep

    def learn(self, x: np.ndarray, offer: np.ndarray, group: np.ndarray, y: np.ndarray,
              now_ms: int) -> set[tuple[int, int]]:
        """Learn from examples (in order); return the (group, offer) touched."""
        self.forget(set(zip(group.tolist(), offer.tolist())), now_ms)
        predicted = learn(self.shared_mean, self.shared_prec, self.offer_mean, self.offer_prec,
                          self.catalog.offer_vectors, x, offer, group, y)
        # the evidence, by (group, offer), vectorised; the recent (prediction, label)
        # pairs per model, a slice each
        np.add.at(self.examples, (group, offer), 1)
        np.add.at(self.positives, (group, offer), y.astype(np.int64))
        np.add.at(self.feature_sum, (group, offer), x.astype(np.float64))
        keys = group.astype(np.int64) * self.examples.shape[1] + offer
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], keys.shape[0]]
        pairs_all = np.stack([predicted[order], y[order]], axis=1)
        n = self.examples.shape[1]
        touched = set()
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            g, i = divmod(int(keys[lo]), n)
            touched.add((g, i))
            recent = self.recent.setdefault((g, i), deque(maxlen=AUC_RECENT))
            recent.extend(map(tuple, pairs_all[lo:hi].tolist()))
            self.updated_ms[g, i] = now_ms
            pairs = np.array(recent, dtype=np.float64)
            labels = pairs[:, 1]
            if labels.sum() >= 10 and (1 - labels).sum() >= 10:
                self.auc[g, i] = auc_of(pairs[:, 0], labels)
                self.auc_examples[g, i] = pairs.shape[0]
        self.shared_examples += y.shape[0]
        self.shared_updated_ms = now_ms
        return touched

    def entries(self, touched: set[tuple[int, int]]) -> dict[str, ModelEntry]:
        sig = self.signature
        out = {SHARED: ModelEntry(sig, self.shared_mean.tobytes(), self.shared_prec.tobytes(),
                                  self.shared_examples, 0, self.shared_updated_ms)}
        groups = self.catalog.learning.groups
        for g, i in touched:
            out[model_name(self.catalog.offers[i].id, groups[g])] = ModelEntry(
                sig, self.offer_mean[g, i].tobytes(), self.offer_prec[g, i].tobytes(),
                int(self.examples[g, i]), int(self.positives[g, i]), int(self.updated_ms[g, i]),
                self.feature_sum[g, i].tobytes(), float(self.auc[g, i]),
                int(self.auc_examples[g, i]))
        return out

    def served(self, version: str) -> Served:
        """The serving arrays (visit order, per group)."""
        catalog = self.catalog
        weights, bias, var_w, var_b = fold(self.shared_mean, self.shared_prec, self.offer_mean,
                                           self.offer_prec, catalog.offer_vectors)
        visit = catalog.visit
        order = visit.offer_of
        visits, vws, vbs = [], [], []
        for g in range(weights.shape[0]):
            time.sleep(0)  # let requests waiting for the interpreter go first
            w = np.ascontiguousarray(weights[g][order], dtype=np.float32)
            b = np.ascontiguousarray(bias[g][order], dtype=np.float64)
            vw = np.ascontiguousarray(var_w[g][order], dtype=np.float32)
            vb = np.ascontiguousarray(var_b[g][order], dtype=np.float64)
            for a in (w, b, vw, vb):
                a.flags.writeable = False
            visits.append((visit.offer_of, visit.program, visit.masks, visit.window,
                           visit.value, w, b, visit.rules))
            vws.append(vw)
            vbs.append(vb)
        examples = tuple(int(self.examples[g].sum()) for g in range(weights.shape[0]))
        return Served(version, tuple(visits), tuple(vws), tuple(vbs), examples)


def static_served(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Zero logit variances (visit order) for the catalog's own model: Thompson
    sampling over it is greedy."""
    n, f = catalog.visit.weights.shape
    vw = np.zeros((n, f), dtype=np.float32)
    vb = np.zeros(n, dtype=np.float64)
    vw.flags.writeable = vb.flags.writeable = False
    return vw, vb


class Counters(NamedTuple):
    outcomes: int = 0
    duplicates: int = 0
    late: int = 0
    unknown_decision: int = 0
    examples: int = 0


class Learner:
    """The store's learner, in whichever process holds the lease.

    ``cycle()`` is one step of the loop (one write transaction); the process's
    ``LearningLoop`` thread runs it every ``publish_interval / 2``."""

    def __init__(self, store: ProfileStore, catalog: Callable[[], Catalog],
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.catalog = catalog
        self.clock = clock
        self.holder = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.posterior: Posterior | None = None
        self.version = None  # the model version ``posterior`` is, once committed
        self._committing = None
        self.last_cleanup = 0.0

    def _posterior(self, txn, catalog: Catalog) -> Posterior:
        if self.posterior is None or self.posterior.catalog is not catalog:
            posterior = Posterior(catalog)
            stale = posterior.load(self.store.models(txn))
            if stale:
                log.warning("learning: %d stored models were learned over other feature "
                            "lists; those start afresh from the catalog's [model]", stale)
            self.posterior = posterior
            self.version = None
        return self.posterior

    def cycle(self) -> int | None:
        """Take or renew the lease and learn what is new; return the examples learned,
        or None when another process holds the lease."""
        catalog = self.catalog()
        if not catalog.learning.enabled:
            if catalog.learning.records and self.clock() - self.last_cleanup > CLEANUP_EVERY_S:
                # an experiment without learning still records: keep the retention
                self.last_cleanup = self.clock()
                cutoff = int(self.clock() * 1000) - catalog.learning.retention_ms
                self.store.write(lambda txn: self._expire(txn, cutoff))
            return None
        try:
            learned = self.store.write(lambda txn: self._cycle(txn, catalog))
        except Exception:
            self.posterior = self.version = None  # reload: the transaction was aborted
            raise
        if self._committing is not None:
            self.version, self._committing = self._committing, None
        return learned

    def _cycle(self, txn, catalog: Catalog) -> int | None:
        store = self.store
        now_ms = int(self.clock() * 1000)
        lease = store.meta_value(txn, "learner")
        if lease is not None and lease[0] != self.holder and lease[1] > now_ms:
            self.posterior = self.version = None  # another learner changes the models
            return None
        if lease is None or lease[0] != self.holder:
            log.info("learning: this process holds the learner lease (%s)", self.holder)
            self.posterior = self.version = None  # another may have learned meanwhile
        store.put_meta_value(txn, "learner", [self.holder, now_ms + LEASE_MS])
        learning = catalog.learning
        posterior = self._posterior(txn, catalog)
        state = store.meta_value(txn, "learner_state") or {}
        cursor = state.get("cursor", 1)
        counts = Counters(*state.get("counts", ()))._asdict()
        examples: list[tuple[bytes, int, int, float]] = []  # features, offer, group, y
        records = {}

        def record_of(decision_id: str):
            if decision_id not in records:
                records[decision_id] = store.decision(txn, decision_id)
            return records[decision_id]

        def example(record, offer_id: str, y: float) -> None:
            i = catalog.offer_index.get(offer_id)
            if i is None or len(record.features) != 4 * len(catalog.feature_names):
                return  # an offer since removed, or features of another catalog
            examples.append((record.features, i, learning.group_of(record.channel), y))

        outcomes = store.outcomes_from(txn, cursor, MAX_OUTCOMES)
        for position, outcome in outcomes:
            record = record_of(outcome.decision_id)
            if record is None:
                if now_ms - _decided_ms(outcome.decision_id) < UNKNOWN_GRACE_MS:
                    break  # its record may still be on its way: look again next cycle
                counts["unknown_decision"] += 1
                cursor = position + 1
                continue
            cursor = position + 1
            counts["outcomes"] += 1
            self._join(txn, learning, record, outcome, counts, example)
        for label in store.take_expired_labels(txn, now_ms, MAX_EXPIRED):
            if not label.done:
                record = record_of(label.decision_id)
                if record is not None:
                    example(record, label.offer_id, 0.0)
        state = {"cursor": cursor, "counts": list(counts.values())}
        if examples:
            f = len(catalog.feature_names)
            x = np.frombuffer(b"".join(e[0] for e in examples), dtype="<f4").reshape(-1, f)
            offer = np.array([e[1] for e in examples], dtype=np.int32)
            group = np.array([e[2] for e in examples], dtype=np.int32)
            y = np.array([e[3] for e in examples], dtype=np.float64)
            touched = posterior.learn(np.ascontiguousarray(x), offer, group, y, now_ms)
            for name, entry in posterior.entries(touched).items():
                store.put_model(txn, name, entry)
            counts["examples"] += len(examples)
            state["counts"] = list(counts.values())
            version = (store.meta_value(txn, "model_version") or [0])[0] + 1
            store.put_meta_value(txn, "model_version", [version, now_ms, counts["examples"]])
            self._committing = version
        store.put_meta_value(txn, "learner_state", state)
        if self.clock() - self.last_cleanup > CLEANUP_EVERY_S:
            self.last_cleanup = self.clock()
            self._expire(txn, now_ms - learning.retention_ms)
        return len(examples)

    def _expire(self, txn, cutoff_ms: int) -> None:
        """The retention: records and outcomes older than ``cutoff_ms`` go (the outcomes
        log is kept that long, whatever the learner's cursor, for the export), at most
        ``EXPIRE_PER_CLEANUP`` of each every ``CLEANUP_EVERY_S``: 2,000/s sustained, each
        cleanup a short write transaction."""
        self.store.expire_decisions(txn, cutoff_ms, EXPIRE_PER_CLEANUP)
        self.store.expire_outcomes(txn, cutoff_ms, EXPIRE_PER_CLEANUP)

    def _join(self, txn, learning: Learning, record, outcome: OutcomeRecord, counts: dict,
              example) -> None:
        """One outcome joined to its decision record: an impression opens a label, the
        label outcome (or a dismissal) closes it with an example."""
        store = self.store
        if record.offer(outcome.offer_id) is None:
            counts["unknown_decision"] += 1  # checked at Track: a record erased since
            return
        window = learning.window_ms(record.channel, learning.label)
        if window is None:
            return  # the channel does not learn
        label = store.label(txn, outcome.decision_id, outcome.offer_id)
        kind = outcome.kind
        if kind == "impression":
            if label is not None:
                counts["duplicates"] += 1
                return
            store.put_label(txn, Label(outcome.at_ms + window, outcome.decision_id,
                                       outcome.offer_id, False))
            return
        if kind != learning.label and kind != "dismissal":
            return  # recorded for reports, not learned from
        y = 1.0 if kind == learning.label else 0.0
        if label is None:
            # a response without an impression: it was shown all the same
            if outcome.at_ms > record.decided_ms + window:
                counts["late"] += 1
                return
            store.put_label(txn, Label(record.decided_ms + window, outcome.decision_id,
                                       outcome.offer_id, True))
            example(record, outcome.offer_id, y)
            return
        if label.done:
            counts["duplicates"] += 1
            return
        if outcome.at_ms > label.deadline_ms:
            counts["late"] += 1  # its window's close labels it negative
            return
        store.put_label(txn, label._replace(done=True))
        example(record, outcome.offer_id, y)


def _decided_ms(decision_id: str) -> int:
    try:
        return int(decision_id[:12], 16)
    except ValueError:
        return 0


# ------------------------------------------------------------------ model insight
class OfferInsight(NamedTuple):
    offer_id: str
    channel: str  # "" for the model the other channels share
    impressions: int
    positives: int
    propensity: float
    low: float
    high: float
    auc: float
    auc_examples: int
    updated_ms: int
    top_features: tuple[tuple[str, float], ...]
    prior_only: bool


class ModelInsight(NamedTuple):
    model_version: str
    catalog_version: str
    published_ms: int
    examples: int
    counters: Counters
    pending: int
    offers: tuple[OfferInsight, ...]
    shared_top_features: tuple[tuple[str, float], ...]


def _propensity(z: float) -> float:
    """The served propensity of log-odds ``z`` (clamped as the kernels clamp)."""
    return sigmoid(max(-LOGIT_MAX, min(LOGIT_MAX, z)))


def insight(store: ProfileStore, catalog: Catalog, offer_id: str = "", channel: str = "",
            top: int = 5) -> ModelInsight:
    """What the stored models know, per offer and channel group (``GetModel``)."""
    learning = catalog.learning
    posterior = Posterior(catalog)
    with store.reader() as reader:
        posterior.load(reader.models())
        txn = reader._txn  # one snapshot for every figure
        published = store.meta_value(txn, "model_version") or [0, 0, 0]
        state = store.meta_value(txn, "learner_state") or {}
        pending = store.count_labels(txn)
    weights, bias, var_w, var_b = fold(posterior.shared_mean, posterior.shared_prec,
                                       posterior.offer_mean, posterior.offer_prec,
                                       catalog.offer_vectors)
    names = catalog.feature_names
    groups = learning.groups
    wanted_groups = [g for g, name in enumerate(groups)
                     if not channel or name == channel or (name == "" and channel not in groups)]
    offers = []
    for i, offer in enumerate(catalog.offers):
        if offer_id and offer.id != offer_id:
            continue
        for g in wanted_groups:
            n = int(posterior.examples[g, i])
            x = posterior.feature_sum[g, i] / n if n else np.zeros(len(names))
            z = float(bias[g, i] + weights[g, i].astype(np.float64) @ x)
            v = float(var_b[g, i] + var_w[g, i].astype(np.float64) @ (x * x))
            half = 1.96 * math.sqrt(max(v, 0.0))
            order = np.argsort(-np.abs(weights[g, i]), kind="stable")[:top]
            offers.append(OfferInsight(
                offer.id, groups[g], n, int(posterior.positives[g, i]), _propensity(z),
                _propensity(z - half), _propensity(z + half), float(posterior.auc[g, i]),
                int(posterior.auc_examples[g, i]), int(posterior.updated_ms[g, i]),
                tuple((names[j], float(weights[g, i, j])) for j in order), n == 0))
    d_names = catalog.model.offer_features
    shared_names = (["intercept"] + list(names) + list(d_names)
                    + [f"{f}*{d}" for f in names for d in d_names])
    order = [j for j in np.argsort(-np.abs(posterior.shared_mean), kind="stable") if j][:top]
    return ModelInsight(str(published[0]), catalog.version, int(published[1]),
                        int(published[2]), Counters(*state.get("counts", ())), pending,
                        tuple(offers),
                        tuple((shared_names[j], float(posterior.shared_mean[j])) for j in order))
