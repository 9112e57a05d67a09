"""``decision simulate``: proof that the server learns, against hidden truth.

A simulated world of customers with latent preferences drives a real server through
gRPC, like ``decision.loadtest`` (this module imports only the generated stubs and its
own code, never the server's). Per step: ``Decide(customer, channel)``, show the top
offer (an ``impression`` event), draw the click from the hidden truth (a ``click``
event, and sometimes a ``conversion`` with its amount). The simulator knows the truth,
so per experiment arm it reports, for the same customers, what the best fixed policy
the truth allows (the oracle: each customer's best eligible offer) and showing a random
eligible offer would have earned, as expected values (computed, not sampled), and the
regret of what was shown: ``oracle - truth(shown offer)`` per decision.

The truth::

    P(click | customer c, offer o, channel h) = sigmoid(a + b_o + bias_h
                                                + (G x_c + u_c) . e_o + pref_h . e_o)

``x_c`` the customer's features (upserted into her profile: the server sees them),
``u_c`` a small latent preference the server cannot see, ``e_o`` the offer's features
(in the catalog), ``G`` a hidden map from customer features to preferences over offer
features. The drift after ``drift_after`` steps permutes the rows of ``G``: what a
customer liked in one offer feature she now likes in another. A per-offer logistic
model over the customer features (the server's) can represent the truth up to ``u_c``,
so a learner can come close to the oracle; the catalog's ``[model]`` is deliberately
pessimistic and misleading (it favours what customers dislike), so nothing comes for
free from the prior.

Two ways to run::

    decision simulate --data-dir DIR ...          # writes the catalog, starts a server
    decision simulate --write-catalog sim.toml    # then: decision serve --catalog sim.toml
    decision simulate --server HOST:PORT ...      # against that server

It prints a table per arm, writes ``summary.json`` and ``regret.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

CUSTOMER_FEATURES = ("age", "tenure", "spend", "mobile", "kids", "trips")
OFFER_FEATURES = ("premium", "discount", "bundle", "digital_only")
CHANNELS = ("web", "contact_center")
POLICIES = ("greedy", "epsilon", "squarecb", "thompson")
ARM_MODELS = {"learning": ("learning", None), "static": ("static", None),
              "random": ("random", None), "greedy": ("learning", "greedy")}
DESCRIPTION = ("Simulated customers with hidden response probabilities drive a real "
               "server: per experiment arm, the click rate against the oracle (each "
               "customer's best offer by the truth) and random, regret per decision, and "
               "a regret plot.")
MARKER = ".decision-simulate"  # a data directory this command created (safe to clear)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


# ---------------------------------------------------------------------- the truth
class World:
    """The hidden truth: offers, customers, response probabilities, the drift.

    Offers and the truth depend on ``seed`` and ``n_offers`` only; customers on
    ``seed`` and ``n_customers``: the same seed gives the same catalog whatever the
    number of customers.
    """

    intercept = -2.0
    channel_bias: ClassVar[dict] = {"web": 0.0, "contact_center": -0.2}
    #: how each channel shifts the taste for offer features (OFFER_FEATURES order)
    channel_pref: ClassVar[dict] = {"web": (0.0, 0.0, 0.0, 0.3),
                                     "contact_center": (0.5, -0.3, 0.2, 0.0)}

    def __init__(self, seed: int = 1, n_offers: int = 8, n_customers: int = 1000, *,
                 strength: float = 0.55, latent: float = 0.3):
        if not 2 <= n_offers <= 200:
            raise ValueError("offers: 2 to 200")
        if n_customers < 1:
            raise ValueError("customers: at least 1")
        self.seed, self.n_offers, self.n_customers = seed, n_offers, n_customers
        F, D = len(CUSTOMER_FEATURES), len(OFFER_FEATURES)
        rng = np.random.default_rng([seed, 11])
        self.E = _offer_vectors(rng, n_offers, D)  # (K, D)
        self.G = rng.normal(0.0, strength, (D, F))  # hidden taste map
        self.perm = _derangement(rng, D)
        self.G_drift = self.G[self.perm]  # after the drift: the tastes move between features
        self.offer_bias = rng.normal(0.0, 0.25, n_offers)
        self.conversion_rate = rng.uniform(0.1, 0.4, n_offers)  # P(conversion | click)
        self.amount = np.round(rng.uniform(20.0, 120.0, n_offers), 2)
        self.offer_ids = [f"sim-{i:03d}" for i in range(n_offers)]
        digital = self.E[:, OFFER_FEATURES.index("digital_only")] >= 0.5
        if (~digital).sum() < 2:  # keep at least two offers for the contact center
            digital[np.flatnonzero(digital)[: 2 - (~digital).sum()]] = False
            self.E[~digital, OFFER_FEATURES.index("digital_only")] = 0.0
        self.eligible = {"web": np.ones(n_offers, bool), "contact_center": ~digital}
        crng = np.random.default_rng([seed, 23])
        # float32 as the server stores them: the truth reads what the model reads
        self.X = np.clip(crng.normal(0.0, 1.0, (n_customers, F)), -3, 3).astype(np.float32)
        self.U = crng.normal(0.0, latent, (n_customers, D))

    def customer_id(self, c: int) -> str:
        return f"sim-c{c:07d}"

    def logits(self, customers, channel: str, drifted) -> np.ndarray:
        """Log-odds, shape (len(customers), n_offers). ``drifted``: a bool or a bool
        array per customer row."""
        customers = np.asarray(customers)
        x = self.X[customers].astype(np.float64)
        before = x @ self.G.T
        after = x @ self.G_drift.T
        d = np.broadcast_to(np.asarray(drifted, bool), customers.shape)[:, None]
        taste = np.where(d, after, before) + self.U[customers]
        taste = taste + np.asarray(self.channel_pref[channel])
        return (self.intercept + self.channel_bias[channel] + self.offer_bias
                + taste @ self.E.T)

    def probabilities(self, customers, channel: str, drifted) -> np.ndarray:
        return sigmoid(self.logits(customers, channel, drifted))

    def expectations(self, customers, channels, drifted) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
        """Per step: the truth of every offer (steps, K) with the ineligible ones NaN,
        the oracle's expected rate (the best eligible offer) and random's (the mean over
        the eligible ones)."""
        customers = np.asarray(customers)
        channels = np.asarray(channels)
        drifted = np.broadcast_to(np.asarray(drifted, bool), customers.shape)
        truth = np.full((customers.size, self.n_offers), np.nan)
        for h, name in enumerate(CHANNELS):
            rows = np.flatnonzero(channels == h)
            if rows.size:
                p = self.probabilities(customers[rows], name, drifted[rows])
                p[:, ~self.eligible[name]] = np.nan
                truth[rows] = p
        return truth, np.nanmax(truth, axis=1), np.nanmean(truth, axis=1)

    def static_model(self, kind: str = "misleading") -> dict:
        """The catalog's ``[model]``: ``misleading`` (pessimistic intercept, tastes
        reversed: it favours what customers dislike) or ``flat`` (pessimistic, no
        preferences: every offer ties)."""
        model = {"intercept": round(self.intercept - 1.0, 4),
                 "customer_weights": {}, "offer_weights": {}, "interactions": {}}
        if kind == "misleading":
            for j, name in enumerate(CUSTOMER_FEATURES):
                model["interactions"][name] = [round(-0.3 * float(g), 4)
                                               for g in self.G[:, j]]
        elif kind != "flat":
            raise ValueError(f"static model: misleading or flat, got {kind!r}")
        return model


def _offer_vectors(rng, k: int, d: int) -> np.ndarray:
    """Distinct offer-feature patterns: single features, then pairs, then triples, in a
    seeded order; beyond those, random ones."""
    import itertools as it

    patterns = []
    for size in (1, 2, 3):
        group = [c for c in it.combinations(range(d), size)]
        rng.shuffle(group)
        patterns += group
    e = np.zeros((k, d))
    for i in range(k):
        if i < len(patterns):
            e[i, list(patterns[i])] = 1.0
        else:
            e[i] = (rng.random(d) < 0.4) * np.round(rng.uniform(0.5, 1.0, d), 2)
    order = rng.permutation(k)  # single-feature offers need not come first
    return e[order]


def _derangement(rng, n: int) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


# ---------------------------------------------------------------------- the catalog
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }" \
            if v else "{}"
    raise TypeError(type(v))


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _shares(arms: dict[str, float]) -> list[tuple[str, float]]:
    """Normalise arm shares to add up to exactly 1 (the catalog checks the sum)."""
    total = math.fsum(arms.values())
    if total <= 0 or any(s <= 0 for s in arms.values()):
        raise ValueError("arm shares must be positive")
    items = [(name, round(s / total, 6)) for name, s in arms.items()]
    last = round(1.0 - math.fsum(s for _, s in items[:-1]), 6)
    items[-1] = (items[-1][0], last)
    if math.fsum(s for _, s in items) != 1.0:  # rounding: let the last arm absorb it
        items[-1] = (items[-1][0], 1.0 - math.fsum(s for _, s in items[:-1]))
    return items


@dataclass
class CatalogOptions:
    """What the simulation catalog says beyond the world itself."""

    learning: bool = True
    explore: dict[str, dict] = field(default_factory=lambda: {"web": {"policy": "thompson"}})
    arms: dict[str, float] | None = field(
        default_factory=lambda: {"learning": 0.7, "static": 0.15, "random": 0.15})
    control: float = 0.05  # 0: no control group
    click_window: str = "1s"
    conversion_window: str = "2s"
    publish_interval: str = "250ms"
    half_life: str = "0s"  # the catalog's learning.half_life ("0s": never forget)
    prior_variance: float = 0.5
    shared_prior_variance: float = 0.1
    per_channel: tuple[str, ...] = ("web",)
    static_model: str = "misleading"


def parse_arms(text: str) -> dict[str, float] | None:
    """``learning=0.7,static=0.15,random=0.15`` (or ``none``: no experiment)."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    arms = {}
    for part in text.split(","):
        name, sep, share = part.strip().partition("=")
        if not sep or name not in ARM_MODELS:
            raise ValueError(f"--arms {part!r}: NAME=SHARE with NAME one of "
                             f"{', '.join(ARM_MODELS)}")
        try:
            arms[name] = float(share)
        except ValueError:
            raise ValueError(f"--arms {part!r}: the share must be a number") from None
        if not arms[name] > 0:
            raise ValueError(f"--arms {part!r}: the share must be above 0")
    return arms


def simulation_catalog(n_offers: int = 8, seed: int = 1,
                       options: CatalogOptions | None = None, **overrides) -> str:
    """The catalog TOML of the simulated world (``seed``, ``n_offers``) for the server.

    ``options`` (or keyword overrides of its fields: ``learning``, ``explore``,
    ``arms``, ``control``, ``click_window`` ...) set the learning sections; with
    ``learning=False`` none of ``[learning]``, ``[explore]``, ``[control]`` and
    ``[experiments]`` is written: the catalog's ``[model]`` serves, greedy.
    """
    o = options or CatalogOptions()
    if overrides:
        o = CatalogOptions(**{**o.__dict__, **overrides})
    world = World(seed, n_offers, 1)
    model = world.static_model(o.static_model)
    out = [f"# decision simulate: the simulated world of seed {seed}, {n_offers} offers.",
           ("# The truth is hidden in the simulator; this [model] is deliberately "
            f"{o.static_model}."),
           f'version = "sim-{seed}-{n_offers}"',
           f"channels = {_toml_value(list(CHANNELS))}",
           "",
           "[profile]",
           f"features = {_toml_value(list(CUSTOMER_FEATURES))}",
           'counters = ["revenue"]',
           "",
           "[model]",
           f"intercept = {model['intercept']!r}",
           f"offer_features = {_toml_value(list(OFFER_FEATURES))}",
           f"customer_weights = {_toml_value(model['customer_weights'])}",
           f"offer_weights = {_toml_value(model['offer_weights'])}",
           f"interactions = {_toml_value(model['interactions'])}",
           ""]
    for i, oid in enumerate(world.offer_ids):
        feats = {name: float(v) for name, v in zip(OFFER_FEATURES, world.E[i]) if v}
        channels = [h for h in CHANNELS if world.eligible[h][i]]
        label = "+".join(feats) or "plain"
        out += ["[[offer]]",
                f'id = "{oid}"',
                f'name = "Offer {i} ({label})"',
                f"channels = {_toml_value(channels)}",
                "value = 1.0",
                f"features = {_toml_value(feats)}",
                "[offer.creative]",
                f"sim = {_toml_value({'seed': seed, 'offers': n_offers, 'index': i})}",
                ""]
    out += ["[events.conversion]",
            'fields = { amount = "number" }',
            'do = [{ add = "counter.revenue", value = "event.amount" }]',
            ""]
    if not o.learning:
        return "\n".join(out)
    out += ["[learning]",
            "enabled = true",
            'label = "click"',
            f"prior_variance = {float(o.prior_variance)!r}",
            f"shared_prior_variance = {float(o.shared_prior_variance)!r}",
            f"publish_interval = {_toml_value(o.publish_interval)}",
            f"half_life = {_toml_value(o.half_life)}",
            'retention = "1d"',
            f"per_channel = {_toml_value(list(o.per_channel))}",
            "",
            "[learning.windows]",
            f"default = {_toml_value({'click': o.click_window, 'conversion': o.conversion_window})}",
            ""]
    explore = {h: spec for h, spec in (o.explore or {}).items() if spec}
    if explore:
        out.append("[explore]")
        out += [f"{h} = {_toml_value(spec)}" for h, spec in explore.items()]
        out.append("")
    if o.control:
        out += ["[control]",
                f"share = {float(o.control)!r}",
                f'salt = "sim-control-{seed}"',
                'answer = "random"',
                ""]
    if o.arms:
        out += ["[experiments.sim]",
                f'salt = "sim-{seed}"',
                f"channels = {_toml_value(list(CHANNELS))}",
                "arms = ["]
        for name, share in _shares(o.arms):
            model, policy = ARM_MODELS[name]
            arm = {"name": name, "share": share, "model": model}
            if policy:
                arm["explore"] = {"policy": policy}
            out.append(f"  {_toml_value(arm)},")
        out += ["]", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------- the run
class SimulationError(RuntimeError):
    """The simulation cannot run as asked (no server, a foreign catalog, ...); says why."""


@dataclass
class Plan:
    """Who comes when, on which channel, and the random numbers of her responses: fixed
    by the seed before the run, so two runs differ only by what the server shows."""

    customer: np.ndarray  # int32[steps]
    channel: np.ndarray  # int8[steps], index in CHANNELS
    drifted: np.ndarray  # bool[steps]
    u_click: np.ndarray  # float64[steps]
    u_conversion: np.ndarray  # float64[steps]

    @classmethod
    def make(cls, world: World, steps: int, seed: int, drift_after: int = 0,
             web_share: float = 0.8) -> Plan:
        if steps < 1:
            raise ValueError("steps: at least 1")
        if not 0.0 <= web_share <= 1.0:
            raise ValueError("web share: between 0 and 1")
        rng = np.random.default_rng([seed, 31])
        customer = rng.integers(0, world.n_customers, steps).astype(np.int32)
        channel = (rng.random(steps) >= web_share).astype(np.int8)
        drifted = (np.arange(steps) >= drift_after) if 0 < drift_after < steps else \
            np.zeros(steps, bool)
        return cls(customer, channel, drifted, rng.random(steps), rng.random(steps))

    @property
    def steps(self) -> int:
        return int(self.customer.size)


NO_OFFER, FAILED = -1, -2  # Trace.offer: an empty answer, a failed Decide


@dataclass
class Trace:
    """What happened at each step (filled by the run, read by ``summarize``)."""

    arm: np.ndarray  # int16: index in arms
    offer: np.ndarray  # int16: offer index, NO_OFFER, FAILED
    probability: np.ndarray  # float64: the policy's probability of the shown offer
    policy: np.ndarray  # int8: index in policies
    click: np.ndarray  # bool
    conversion: np.ndarray  # bool
    amount: np.ndarray  # float64: revenue of the conversion
    at_s: np.ndarray  # float64: seconds since the start, when the answer came
    arms: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    model_versions: set = field(default_factory=set)

    @classmethod
    def empty(cls, steps: int) -> Trace:
        return cls(np.zeros(steps, np.int16), np.full(steps, FAILED, np.int16),
                   np.zeros(steps), np.zeros(steps, np.int8), np.zeros(steps, bool),
                   np.zeros(steps, bool), np.zeros(steps), np.zeros(steps))

    def intern(self, names: list[str], name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            names.append(name)
            return len(names) - 1


def respond(world: World, plan: Plan, trace: Trace, i: int, offer: int) -> tuple[bool, bool]:
    """Draw step ``i``'s response to ``offer`` from the truth; fill the trace."""
    trace.offer[i] = offer
    if offer < 0:
        return False, False
    h = int(plan.channel[i])
    p = float(world.probabilities(plan.customer[i:i + 1], CHANNELS[h],
                                  plan.drifted[i:i + 1])[0, offer])
    click = bool(plan.u_click[i] < p)
    conversion = click and bool(plan.u_conversion[i] < world.conversion_rate[offer])
    trace.click[i], trace.conversion[i] = click, conversion
    trace.amount[i] = world.amount[offer] if conversion else 0.0
    return click, conversion


@dataclass
class RunOptions:
    concurrency: int = 4  #: client threads, each with one Decide outstanding
    rate: float = 0.0  #: decisions/s at most (0: as fast as the server answers)
    timeout_s: float = 10.0
    token: str | None = None
    progress: bool = True
    flush_events: int = 500  #: events per TrackStream call at most
    flush_s: float = 0.05  #: and at least this often


class _Events:
    """Outcome events, sent in TrackStream calls from a thread of their own."""

    def __init__(self, stub, options: RunOptions, metadata):
        self.stub, self.options, self.metadata = stub, options, metadata
        self.queue: queue.Queue = queue.Queue()
        self.sent = self.applied = self.duplicates = self.rejected = 0
        self.rejections: list[str] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="simulate-events", daemon=True)
        self.thread.start()

    def put(self, events: list) -> None:
        for e in events:
            self.queue.put(e)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.failure is not None:
            raise SimulationError(f"sending outcome events failed: {self.failure}")

    def _run(self) -> None:
        from decision.v1 import decision_pb2 as pb

        done = False
        while not done:
            batch = []
            deadline = time.monotonic() + self.options.flush_s
            while len(batch) < self.options.flush_events:
                try:
                    e = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if e is None:
                    done = True
                    break
                batch.append(e)
            if not batch or self.failure is not None:
                continue
            try:
                s = self.stub.TrackStream(iter([pb.EventBatch(events=batch)]),
                                          timeout=max(30.0, self.options.timeout_s),
                                          metadata=self.metadata)
            except Exception as exc:  # noqa: BLE001 - reported by close()
                self.failure = exc
                continue
            self.sent += len(batch)
            self.applied += s.applied
            self.duplicates += s.duplicates
            self.rejected += s.rejected_count
            if len(self.rejections) < 5:
                self.rejections += [r.message for r in s.rejected[:5]]


def _check_catalog(stub, world: World, metadata, timeout: float) -> str:
    """The server's catalog must be this world's (seed and offers in each creative)."""
    from decision.v1 import decision_pb2 as pb

    reply = stub.ListOffers(pb.ListOffersRequest(), timeout=timeout, metadata=metadata)
    ids = sorted(o.offer_id for o in reply.offers)
    want = {"seed": world.seed, "offers": world.n_offers}
    found = []
    for o in reply.offers:
        try:
            sim = json.loads(o.creative_json or "{}").get("sim", {})
        except ValueError:
            sim = {}
        found.append({k: sim.get(k) for k in want})
    if ids != sorted(world.offer_ids) or any(f != want for f in found):
        seen = found[0] if found else "no offers"
        raise SimulationError(
            f"the server's catalog ({reply.catalog_version}) is not this simulation's "
            f"(seed {world.seed}, {world.n_offers} offers; the server's offers say {seen}): "
            f"start it with the catalog of 'decision simulate --write-catalog FILE --seed "
            f"{world.seed} --offers {world.n_offers}'")
    return reply.catalog_version


def upsert_customers(stub, world: World, metadata, timeout: float = 10.0,
                     window: int = 16) -> None:
    """Every customer's profile with her features (UpsertProfile, ``window`` at a time)."""
    from decision.v1 import decision_pb2 as pb

    futures = []
    for c in range(world.n_customers):
        req = pb.UpsertProfileRequest(
            identifiers=[pb.Identifier(kind="customer_id", value=world.customer_id(c))],
            features={name: float(v) for name, v in zip(CUSTOMER_FEATURES, world.X[c])})
        futures.append(stub.UpsertProfile.future(req, timeout=timeout, metadata=metadata))
        if len(futures) >= window:
            for f in futures:
                f.result()
            futures = []
    for f in futures:
        f.result()


def model_info(stub, metadata, timeout: float = 10.0) -> dict | None:
    """GetModel's totals, or None when the server does not learn (or cannot say)."""
    import grpc

    from decision.v1 import decision_pb2 as pb

    try:
        m = stub.GetModel(pb.GetModelRequest(), timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return {"unavailable": f"{exc.code().name}: {exc.details()}"}
    return {"model_version": m.model_version, "examples": m.examples, "outcomes": m.outcomes,
            "duplicates": m.duplicates, "late": m.late,
            "unknown_decision": m.unknown_decision, "pending": m.pending,
            "offers": [{"offer_id": o.offer_id, "channel": o.channel,
                        "impressions": o.impressions, "positives": o.positives,
                        "propensity": o.propensity, "auc": o.auc,
                        "prior_only": o.prior_only} for o in m.offers]}


def simulate(address: str, world: World, plan: Plan, options: RunOptions | None = None,
             log=None) -> tuple[Trace, dict]:
    """Drive the server at ``address`` through the plan; (the trace, run facts)."""
    import grpc

    from decision.v1 import decision_pb2 as pb
    from decision.v1 import decision_pb2_grpc as pb_grpc

    options = options or RunOptions()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    metadata = (("authorization", f"Bearer {options.token}"),) if options.token else None
    trace = Trace.empty(plan.steps)
    offer_index = {oid: k for k, oid in enumerate(world.offer_ids)}
    run_id = uuid.uuid4().hex[:10]
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=options.timeout_s)
        except grpc.FutureTimeoutError:
            raise SimulationError(f"cannot connect to {address} within "
                                  f"{options.timeout_s:g} s (is a server listening?)") from None
        stub = pb_grpc.DecisionServiceStub(channel)
        try:
            catalog_version = _check_catalog(stub, world, metadata, options.timeout_s)
            started = time.perf_counter()
            upsert_customers(stub, world, metadata, options.timeout_s)
        except grpc.RpcError as exc:
            raise SimulationError(f"{address}: {exc.code().name}: {exc.details()}") from None
        log(f"simulate: {world.n_customers} customers upserted in "
            f"{time.perf_counter() - started:.1f} s; {plan.steps} steps, "
            f"{options.concurrency} client threads")
        events = _Events(stub, options, metadata)
        lock = threading.Lock()
        counter = itertools.count()
        errors: dict[str, int] = {}
        stop = threading.Event()
        failure: list[BaseException] = []
        mismatched = [0]
        start = time.perf_counter()

        def step(i: int) -> None:
            c, h = int(plan.customer[i]), int(plan.channel[i])
            who = pb.Identifier(kind="customer_id", value=world.customer_id(c))
            try:
                reply = stub.Decide(pb.DecideRequest(customer=who, channel=CHANNELS[h],
                                                     limit=1),
                                    timeout=options.timeout_s, metadata=metadata)
            except grpc.RpcError as exc:
                with lock:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                return
            trace.at_s[i] = time.perf_counter() - start
            with lock:
                trace.arm[i] = trace.intern(trace.arms, reply.arm)
                trace.policy[i] = trace.intern(trace.policies, reply.policy)
                trace.model_versions.add(reply.model_version)
            if reply.eligible_count != int(world.eligible[CHANNELS[h]].sum()):
                mismatched[0] += 1
            if not reply.offers:
                respond(world, plan, trace, i, NO_OFFER)
                return
            shown = reply.offers[0]
            k = offer_index[shown.offer_id]
            trace.probability[i] = shown.probability
            click, conversion = respond(world, plan, trace, i, k)
            common = {"customer": who, "channel": CHANNELS[h],
                      "offer_id": shown.offer_id, "decision_id": reply.decision_id}
            out = [pb.Event(event_id=f"{run_id}-{i}-i", type="impression", **common)]
            if click:
                out.append(pb.Event(event_id=f"{run_id}-{i}-c", type="click", **common))
            if conversion:
                out.append(pb.Event(
                    event_id=f"{run_id}-{i}-v", type="conversion",
                    attributes={"amount": pb.Value(number_value=float(world.amount[k]))},
                    **common))
            events.put(out)

        def worker() -> None:
            try:
                while not stop.is_set():
                    i = next(counter)
                    if i >= plan.steps:
                        return
                    if options.rate > 0:
                        delay = start + i / options.rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    step(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                failure.append(exc)
                stop.set()

        threads = [threading.Thread(target=worker, name=f"simulate-{n}", daemon=True)
                   for n in range(max(1, options.concurrency))]
        for t in threads:
            t.start()
        last = time.perf_counter()
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(0.2)
                if options.progress and time.perf_counter() - last >= 2.0:
                    last = time.perf_counter()
                    done = int((trace.offer != FAILED).sum())
                    elapsed = last - start
                    log(f"simulate: {done}/{plan.steps} decisions, {done / elapsed:,.0f}/s, "
                        f"{int(trace.click.sum())} clicks, model "
                        f"{max(trace.model_versions, default='') or '-'}")
        except KeyboardInterrupt:
            stop.set()
            raise
        finally:
            stop.set()
            for t in threads:
                t.join()
            events.close()
        elapsed = time.perf_counter() - start
        if failure:
            raise SimulationError(f"the simulation failed: {failure[0]!r}") from failure[0]
        decided = int((trace.offer != FAILED).sum())
        facts = {"address": address, "catalog_version": catalog_version, "run_id": run_id,
                 "seconds": round(elapsed, 3),
                 "decisions_per_s": round(decided / elapsed, 1) if elapsed else None,
                 "decided": decided, "errors": errors,
                 "eligible_count_mismatches": mismatched[0],
                 "model_versions_seen": len(trace.model_versions - {""}),
                 "events": {"sent": events.sent, "applied": events.applied,
                            "duplicates": events.duplicates, "rejected": events.rejected,
                            "rejections": events.rejections},
                 "model": model_info(stub, metadata, options.timeout_s)}
    return trace, facts


# ---------------------------------------------------------------------- the figures
ARM_ORDER = ("learning", "greedy", "static", "random", "control")


def arm_label(name: str) -> str:
    return name or "(no arm)"


def phases(steps: int, drift_after: int = 0) -> list[tuple[str, int, int]]:
    """The stretches regret is compared over: halves, before and after a drift."""
    if 0 < drift_after < steps:
        d, mid = drift_after, drift_after + (steps - drift_after) // 2
        return [("pre-drift 1st half", 0, d // 2), ("pre-drift 2nd half", d // 2, d),
                ("post-drift 1st half", d, mid), ("post-drift 2nd half", mid, steps)]
    return [("1st half", 0, steps // 2), ("2nd half", steps // 2, steps)]


def expected_rates(world: World, plan: Plan, offer: np.ndarray,
                   chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: the truth of the offer shown (0 for none), the oracle's and random's
    expected rates, all computed from the truth (no sampling)."""
    n = plan.steps
    shown, oracle, random = np.zeros(n), np.zeros(n), np.zeros(n)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        truth, oracle[lo:hi], random[lo:hi] = world.expectations(
            plan.customer[lo:hi], plan.channel[lo:hi], plan.drifted[lo:hi])
        o = offer[lo:hi]
        rows = np.flatnonzero(o >= 0)
        shown[lo + rows] = truth[rows, o[rows]]
    return shown, oracle, random


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def summarize(world: World, plan: Plan, trace: Trace, drift_after: int = 0,
              windows: int = 20) -> dict:
    """Per arm: decisions, clicks and click rate (Wilson 95%), the expected rates of
    what was shown, of the oracle and of random for the same customers, regret per
    decision by phase and per window of steps."""
    shown, oracle, random = expected_rates(world, plan, trace.offer)
    regret = oracle - shown
    ok = trace.offer != FAILED
    steps = plan.steps
    spans = phases(steps, drift_after)
    size = max(1, math.ceil(steps / max(1, windows)))
    starts = list(range(0, steps, size))
    index = np.arange(steps)
    names = sorted(set(trace.arms), key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER
                                                   else len(ARM_ORDER), a))
    arms, series = {}, {}
    for name in names:
        m = ok & (trace.arm == trace.arms.index(name))
        n = int(m.sum())
        if not n:
            continue
        clicks, conversions = int(trace.click[m].sum()), int(trace.conversion[m].sum())
        lo, hi = wilson(clicks, n)
        by_phase, share_by_phase = [], []
        for _, a, b in spans:
            pm = m & (index >= a) & (index < b)
            by_phase.append(float(regret[pm].mean()) if pm.any() else None)
            share_by_phase.append(_ratio(float(shown[pm].sum()), float(oracle[pm].sum()))
                                  if pm.any() else None)
        by_channel = {}
        for h, channel in enumerate(CHANNELS):
            cm = m & (plan.channel == h)
            if cm.any():
                by_channel[channel] = {
                    "decisions": int(cm.sum()), "click_rate": float(trace.click[cm].mean()),
                    "expected_rate": float(shown[cm].mean()),
                    "oracle_rate": float(oracle[cm].mean()),
                    "random_rate": float(random[cm].mean()),
                    "share_of_oracle": _ratio(float(shown[cm].sum()), float(oracle[cm].sum()))}
        shown_offers = np.bincount(trace.offer[m & (trace.offer >= 0)],
                                   minlength=world.n_offers)
        policies: dict[str, int] = {}
        for code, count in zip(*np.unique(trace.policy[m], return_counts=True)):
            name_ = trace.policies[int(code)] if int(code) < len(trace.policies) else ""
            policies[name_ or "-"] = int(count)
        arms[name] = {
            "decisions": n, "clicks": clicks, "click_rate": clicks / n,
            "click_rate_ci95": [lo, hi],
            "expected_rate": float(shown[m].mean()),
            "oracle_rate": float(oracle[m].mean()), "random_rate": float(random[m].mean()),
            "share_of_oracle": _ratio(float(shown[m].sum()), float(oracle[m].sum())),
            "lift_over_random": _ratio(float(shown[m].sum()), float(random[m].sum())),
            "conversions": conversions, "conversion_rate": conversions / n,
            "revenue_per_decision": float(trace.amount[m].sum()) / n,
            "regret_per_decision": float(regret[m].mean()),
            "cumulative_regret": float(regret[m].sum()),
            "regret_by_phase": by_phase, "share_of_oracle_by_phase": share_by_phase,
            "empty_answers": int((m & (trace.offer == NO_OFFER)).sum()),
            "mean_probability": float(trace.probability[m].mean()),
            "policies": policies, "by_channel": by_channel,
            "shown": {oid: int(k) for oid, k in zip(world.offer_ids, shown_offers)}}
        series[name] = [float(regret[m & (index >= s) & (index < s + size)].mean())
                        if (m & (index >= s) & (index < s + size)).any() else None
                        for s in starts]
    return {"world": {"seed": world.seed, "offers": world.n_offers,
                      "customers": world.n_customers, "steps": steps,
                      "drift_after": drift_after if 0 < drift_after < steps else 0,
                      "oracle_rate": float(oracle[ok].mean()) if ok.any() else None,
                      "random_rate": float(random[ok].mean()) if ok.any() else None},
            "phases": [{"name": p, "from": a, "to": b} for p, a, b in spans],
            "arms": arms,
            "windows": {"size": size, "starts": starts, "regret": series}}


def render(summary: dict, run: dict | None = None) -> str:
    """The table a person reads: one row per arm."""
    w = summary["world"]
    lines = []
    head = (f"decision simulate: {w['steps']:,} steps"
            + (f" (drift after {w['drift_after']:,})" if w["drift_after"] else "")
            + f", {w['customers']:,} customers, {w['offers']} offers, seed {w['seed']}")
    if run:
        head += (f"; {run.get('decided', 0):,} decisions in {run.get('seconds', 0):.1f} s "
                 f"({run.get('decisions_per_s') or 0:,.0f}/s)")
    lines.append(head)
    short = {"pre-drift 1st half": "pre 1st", "pre-drift 2nd half": "pre 2nd",
             "post-drift 1st half": "post 1st", "post-drift 2nd half": "post 2nd"}
    phase_names = [short.get(p["name"], p["name"]) for p in summary["phases"]]
    lines.append(f"{'arm':10} {'decisions':>9} {'clicks':>7}  {'click rate [95% CI]':22} "
                 f"{'expected':>8} {'oracle':>7} {'random':>7} {'of oracle':>9} "
                 f"{'vs random':>9}  regret/decision (of oracle): " + " | ".join(phase_names))
    for name, a in summary["arms"].items():
        lo, hi = a["click_rate_ci95"]
        share = a["share_of_oracle"]
        lift = a["lift_over_random"]
        phases_txt = " | ".join(
            "-" if r is None else f"{r:.3f} ({'-' if q is None else f'{q:.0%}'})"
            for r, q in zip(a["regret_by_phase"], a["share_of_oracle_by_phase"]))
        lines.append(
            f"{arm_label(name):10} {a['decisions']:>9,} {a['clicks']:>7,}  "
            f"{a['click_rate']:.3f} [{lo:.3f}, {hi:.3f}]   "
            f"{a['expected_rate']:>8.3f} {a['oracle_rate']:>7.3f} {a['random_rate']:>7.3f} "
            f"{'-' if share is None else f'{share:.0%}':>9} "
            f"{'-' if lift is None else f'{lift:.2f}x':>9}  {phases_txt}")
    lines.append("expected: mean true click probability of the offers shown (what the click "
                 "rate estimates, without the draws' noise); oracle: each customer's best "
                 "eligible offer by the truth; random: the mean over the eligible offers; "
                 "regret = oracle - truth of the shown offer.")
    if run:
        ev = run.get("events", {})
        extra = [f"events {ev.get('sent', 0):,} sent, {ev.get('applied', 0):,} applied"
                 + (f", {ev['rejected']:,} rejected ({'; '.join(ev['rejections'][:2])})"
                    if ev.get("rejected") else "")]
        if run.get("errors"):
            extra.append("Decide errors " + ", ".join(f"{k} {v}" for k, v in
                                                      run["errors"].items()))
        model = run.get("model") or {}
        if "model_version" in model:
            extra.append(f"model {model['model_version'] or '-'}: {model['examples']:,} "
                         f"examples learned, {model['pending']:,} pending, "
                         f"{model['late']:,} late, {model['duplicates']:,} duplicates, "
                         f"{model['unknown_decision']:,} unknown decisions; "
                         f"{run.get('model_versions_seen', 0)} versions served")
        elif "unavailable" in model:
            extra.append(f"GetModel: {model['unavailable']}")
        lines.append("; ".join(extra))
    return "\n".join(lines)


def save_plot(path: Path, world: World, plan: Plan, trace: Trace, summary: dict) -> Path:
    """Regret per decision per window, and cumulative regret per decision, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown, oracle, _ = expected_rates(world, plan, trace.offer)
    regret = oracle - shown
    ok = trace.offer != FAILED
    fig, (win, cum) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    size = summary["windows"]["size"]
    starts = np.asarray(summary["windows"]["starts"])
    for name in summary["arms"]:
        ys = [np.nan if r is None else r for r in summary["windows"]["regret"][name]]
        line, = win.plot(starts + size / 2, ys, marker="o", ms=3, label=arm_label(name))
        m = ok & (trace.arm == trace.arms.index(name))
        steps = np.flatnonzero(m)
        if steps.size:
            cum.plot(steps, np.cumsum(regret[steps]) / np.arange(1, steps.size + 1),
                     color=line.get_color(), label=arm_label(name))
    drift = summary["world"]["drift_after"]
    for ax in (win, cum):
        if drift:
            ax.axvline(drift, color="0.3", ls="--", lw=1)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    if drift:
        win.text(drift, win.get_ylim()[1] * 0.95, " drift", va="top", fontsize=9)
    w = summary["world"]
    win.set_title(f"decision simulate: seed {w['seed']}, {w['offers']} offers, "
                  f"{w['customers']:,} customers")
    win.set_ylabel(f"regret per decision\n(window of {size:,} steps)")
    cum.set_ylabel("cumulative regret\nper decision")
    cum.set_xlabel("step")
    win.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- a server of its own
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data_dir(data_dir: Path, keep_store: bool = False) -> Path:
    """A directory for the catalog, the store and the server log: new, empty, or one this
    command made before (its store is cleared, unless ``keep_store``: learning starts
    afresh). Refuses any other non-empty directory."""
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
        raise SimulationError(f"--data-dir {data_dir}: not empty and not made by decision "
                              "simulate; give a new or empty directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by decision simulate; its store is cleared on "
                                   "each run\n")
    if not keep_store:
        shutil.rmtree(data_dir / "store", ignore_errors=True)
    return data_dir


@contextlib.contextmanager
def local_server(data_dir: Path, catalog: Path, workers: int = 1, timeout_s: float = 300.0,
                 extra: tuple[str, ...] = ()):
    """``with local_server(dir, catalog) as address``: ``decision serve`` as a
    subprocess on 127.0.0.1 (an ephemeral port, learnt from --port-file), store in
    ``dir/store``, log in ``dir/server.log``; SIGTERM when the block ends."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    data_dir = Path(data_dir)
    port_file = data_dir / "server.port"
    port_file.unlink(missing_ok=True)
    # --workers shares one port through SO_REUSEPORT: it needs a fixed one
    address = "127.0.0.1:0" if workers == 1 else f"127.0.0.1:{_free_port()}"
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "decision.cli", "serve", "--data-dir",
           str(data_dir / "store"), "--catalog", str(catalog), "--address", address,
           "--port-file", str(port_file), "--workers", str(workers), "--nosync", *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                how = (f"exited {proc.returncode}" if proc.poll() is not None
                       else f"not serving after {timeout_s:g} s")
                raise SimulationError(f"the server did not start ({how}); its log "
                                      f"({log_path}):\n{tail}")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SimulationError(f"the server on {address} is not serving; its "
                                          f"log: {log_path}")
                time.sleep(0.1)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------- the command
def add_parser(sub) -> argparse.ArgumentParser:
    """``decision simulate``: add the subcommand to the ``decision`` parser."""
    p = sub.add_parser(
        "simulate", help="prove that the server learns: simulated customers with hidden "
        "response probabilities drive a real server; per experiment arm, the click rate "
        "against the oracle and random, regret, and a regret plot",
        description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where (default: a server of its own in a temporary directory)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="HOST:PORT", help="a running server, started "
                       "with this simulation's catalog (--write-catalog); plaintext gRPC")
    where.add_argument("--data-dir", metavar="DIR", help="write the catalog here, start "
                       "'decision serve' on 127.0.0.1 with a store here, stop it at the end "
                       "(a directory this command made before is reused, its store cleared)")
    where.add_argument("--write-catalog", metavar="FILE", help="only write the simulation's "
                       "catalog (for --server) and exit")
    g.add_argument("--token", help="bearer token for --server (default: DECISION_TOKEN)")
    g.add_argument("--workers", type=int, default=1, help="server processes of a server "
                   "of its own (default %(default)s)")
    g.add_argument("--keep-store", action="store_true", help="with --data-dir: keep the "
                   "store (and what it learnt) from the previous run")
    g = p.add_argument_group("the world")
    g.add_argument("--steps", type=int, default=6000, help="decisions (default %(default)s)")
    g.add_argument("--customers", type=int, default=1000, help="(default %(default)s)")
    g.add_argument("--offers", type=int, default=8, help="(default %(default)s)")
    g.add_argument("--seed", type=int, default=1, help="the world and the plan "
                   "(default %(default)s)")
    g.add_argument("--drift-after", type=int, default=0, metavar="N", help="tastes change "
                   "after N steps (0: never; default %(default)s)")
    g.add_argument("--web-share", type=float, default=0.8, help="share of steps on web, the "
                   "rest on contact_center (default %(default)s)")
    g = p.add_argument_group("the catalog (a server of its own, or --write-catalog)")
    g.add_argument("--no-learning", action="store_true", help="no [learning], [explore], "
                   "[control], [experiments]: the static [model] serves, greedy")
    g.add_argument("--web-policy", choices=POLICIES, default="thompson",
                   help="web's exploration (default %(default)s; greedy: exploration off)")
    g.add_argument("--contact-center-policy", choices=POLICIES, default="greedy",
                   help="(default %(default)s)")
    g.add_argument("--epsilon", type=float, default=0.1, help="for epsilon (default "
                   "%(default)s)")
    g.add_argument("--gamma-scale", type=float, default=10.0, help="for squarecb "
                   "(default %(default)s)")
    g.add_argument("--gamma-exponent", type=float, default=0.5, help="for squarecb "
                   "(default %(default)s)")
    g.add_argument("--arms", default="learning=0.7,static=0.15,random=0.15",
                   help="experiment arms NAME=SHARE among learning, greedy (the learned "
                   "model without exploration), static, random; 'none': no experiment "
                   "(default %(default)s)")
    g.add_argument("--control", type=float, default=0.05, help="universal control group "
                   "share, random answer (0: none; default %(default)s)")
    g.add_argument("--click-window", default="1s", help="response window of clicks "
                   "(default %(default)s)")
    g.add_argument("--publish-interval", default="250ms", help="(default %(default)s)")
    g.add_argument("--half-life", default="0s",
                   help="evidence counts half after this (learning.half_life; default "
                   "%(default)s: never forgotten); a short one relearns faster after a drift")
    g.add_argument("--static-model", choices=("misleading", "flat"), default="misleading",
                   help="the catalog's [model], the learning's prior (default %(default)s)")
    g = p.add_argument_group("the run")
    g.add_argument("--concurrency", type=int, default=4, help="client threads, one Decide "
                   "outstanding each (default %(default)s)")
    g.add_argument("--rate", type=float, default=0.0, help="decisions/s at most (0: as fast "
                   "as answered; default %(default)s)")
    g.add_argument("--windows", type=int, default=20, help="regret windows over the steps "
                   "(default %(default)s)")
    g.add_argument("--out", default="simulate-out", metavar="DIR", help="summary.json, "
                   "regret.png (default %(default)s)")
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--quiet", action="store_true", help="no progress lines")


def _explore_spec(policy: str, args) -> dict:
    if policy == "epsilon":
        return {"policy": policy, "epsilon": args.epsilon}
    if policy == "squarecb":
        return {"policy": policy, "gamma_scale": args.gamma_scale,
                "gamma_exponent": args.gamma_exponent}
    return {"policy": policy}


def catalog_options(args) -> CatalogOptions:
    explore = {}
    for channel, policy in (("web", args.web_policy),
                            ("contact_center", args.contact_center_policy)):
        if policy != "greedy":
            explore[channel] = _explore_spec(policy, args)
    return CatalogOptions(learning=not args.no_learning, explore=explore,
                          arms=parse_arms(args.arms), control=args.control,
                          click_window=args.click_window,
                          publish_interval=args.publish_interval,
                          half_life=args.half_life, static_model=args.static_model)


def run(args) -> int:
    log = (lambda line: None) if args.quiet else \
        (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        if args.steps < 1 or args.customers < 1 or not 2 <= args.offers <= 200:
            raise SimulationError("--steps and --customers must be >= 1, --offers 2 to 200")
        if args.concurrency < 1 or args.workers < 1:
            raise SimulationError("--concurrency and --workers must be >= 1")
        try:
            options = catalog_options(args)
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
        if options.learning is False and (options.arms or options.control
                                          or options.explore):
            options = CatalogOptions(**{**options.__dict__, "arms": None, "control": 0.0,
                                        "explore": {}})
        catalog = simulation_catalog(args.offers, args.seed, options)
        if args.write_catalog:
            Path(args.write_catalog).write_text(catalog)
            print(f"decision simulate: catalog written to {args.write_catalog}; serve it "
                  f"and run decision simulate --server HOST:PORT --seed {args.seed} "
                  f"--offers {args.offers}")
            return 0
        world = World(args.seed, args.offers, args.customers)
        plan = Plan.make(world, args.steps, args.seed, args.drift_after, args.web_share)
        run_options = RunOptions(concurrency=args.concurrency, rate=args.rate,
                                 token=args.token or os.environ.get("DECISION_TOKEN"),
                                 progress=not args.quiet)
        out = Path(args.out)
        if args.server:
            trace, facts = simulate(args.server, world, plan, run_options, log)
        else:
            temporary = args.data_dir is None
            data_dir = Path(tempfile.mkdtemp(prefix="decision-simulate-")) if temporary \
                else prepare_data_dir(Path(args.data_dir), args.keep_store)
            try:
                catalog_path = data_dir / "catalog.toml"
                catalog_path.write_text(catalog)
                log(f"simulate: starting decision serve (store in {data_dir / 'store'})")
                with local_server(data_dir, catalog_path, workers=args.workers) as address:
                    trace, facts = simulate(address, world, plan, run_options, log)
            finally:
                if temporary:
                    shutil.rmtree(data_dir, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "catalog.toml").write_text(catalog)
    except SimulationError as exc:
        print(f"decision simulate: {exc}", file=sys.stderr)
        return 2
    summary = summarize(world, plan, trace, args.drift_after, args.windows)
    summary["run"] = {**facts, "steps": args.steps, "concurrency": args.concurrency,
                      "rate": args.rate, "web_share": args.web_share}
    if not args.server:
        summary["run"]["catalog"] = {
            "learning": options.learning, "explore": options.explore, "arms": options.arms,
            "control": options.control, "click_window": options.click_window,
            "publish_interval": options.publish_interval,
            "static_model": options.static_model}
    out.mkdir(parents=True, exist_ok=True)
    print(render(summary, summary["run"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    written = [out / "summary.json"]
    if not args.no_plot:
        written.append(save_plot(out / "regret.png", world, plan, trace, summary))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decision simulate", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # until decision.cli wires it: python -m decision.simulate
    sys.exit(main())
