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

import numpy as np

CUSTOMER_FEATURES = ("age", "tenure", "spend", "mobile", "kids", "trips")
OFFER_FEATURES = ("premium", "discount", "bundle", "digital_only")
CHANNELS = ("web", "contact_center")
POLICIES = ("greedy", "epsilon", "squarecb", "thompson")
ARM_MODELS = {"learning": ("learning", None), "static": ("static", None),
              "random": ("random", None), "greedy": ("learning", "greedy")}
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
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------- the truth
class World:
    """The hidden truth: offers, customers, response probabilities, the drift.

    Offers and the truth depend on ``seed`` and ``n_offers`` only; customers on
    ``seed`` and ``n_customers``: the same seed gives the same catalog whatever the
    number of customers.
    """

    intercept = -2.0
    channel_bias = {"web": 0.0, "contact_center": -0.2}
    #: how each channel shifts the taste for offer features (OFFER_FEATURES order)
    channel_pref = {"web": (0.0, 0.0, 0.0, 0.3),
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
           "# The truth is hidden in the simulator; this [model] is deliberately "
           f"{o.static_model}.",
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
