"""What the load test sends: the RPC mix, the customers it draws, the requests.

Customers are the demo data set's (``decision.demo.customer_id``: C0000000 ...), drawn
with a hot/cold skew so a few customers get most requests, as on a real site. The
draws come from a seeded generator, so a run is reproducible; each client process
gets its own seed.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from decision.demo import customer_id
from decision.v1 import decision_pb2 as pb

#: RPCs the harness can drive, and the gRPC method each calls. Unary RPCs only: the
#: streaming ones (TrackStream, WatchTriggers) have no per-request latency to speak of.
KINDS = ("decide", "decide_batch", "track", "get_profile", "list_offers", "upsert_profile")
METHODS = {"decide": "Decide", "decide_batch": "DecideBatch", "track": "Track",
           "get_profile": "GetProfile", "list_offers": "ListOffers",
           "upsert_profile": "UpsertProfile"}
DEVICES = ("mobile", "desktop", "tablet", "kiosk")
PAGES = ("home", "search", "cart", "checkout", "account")


class WorkloadError(ValueError):
    """A load-test option that cannot work; the message says which and why."""


def parse_mix(text: str) -> dict[str, float]:
    """``decide=90,track=10`` -> {"decide": 0.9, "track": 0.1} (weights, any scale)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in KINDS:
            raise WorkloadError(f"--mix {text!r}: unknown RPC {name!r}; one of "
                                f"{', '.join(KINDS)}")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise WorkloadError(f"--mix {text!r}: weight of {name!r} is not a number") from None
        if w < 0 or not np.isfinite(w):
            raise WorkloadError(f"--mix {text!r}: weight of {name!r} must be >= 0")
        mix[name] = mix.get(name, 0.0) + w
    total = sum(mix.values())
    if total <= 0:
        raise WorkloadError(f"--mix {text!r}: give at least one RPC a weight > 0")
    return {k: w / total for k, w in mix.items() if w > 0}


def parse_skew(text: str) -> tuple[str, float, float]:
    """``zipf:1.1`` | ``hot:80/20`` (80% of requests to 20% of customers) | ``uniform``."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "uniform" and not arg:
            return ("uniform", 0.0, 0.0)
        if kind == "zipf":
            s = float(arg or "1.0")
            if s <= 0:
                raise ValueError
            return ("zipf", s, 0.0)
        if kind == "hot":
            share, _, hot = (arg or "80/20").partition("/")
            p, h = float(share) / 100, float(hot) / 100
            if not (0 < p <= 1 and 0 < h <= 1):
                raise ValueError
            return ("hot", p, h)
    except ValueError:
        pass
    raise WorkloadError(f"--skew {text!r}: expected zipf:S (S > 0), hot:P/H (P% of "
                        "requests to H% of customers) or uniform")


def draw_customers(n_customers: int, skew: tuple[str, float, float], size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Customer indexes [0, n_customers) with the given skew. The hot customers are a
    seeded random subset, not the lowest ids."""
    kind, a, b = skew
    if kind == "uniform":
        ranks = rng.integers(0, n_customers, size)
    elif kind == "zipf":  # bounded Zipf: P(rank k) ~ 1 / k^s over the n customers
        weights = 1.0 / np.arange(1, n_customers + 1, dtype=np.float64) ** a
        cdf = np.cumsum(weights)
        ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    else:  # hot: a share a of requests goes to the first b of the ranks
        n_hot = max(1, int(round(n_customers * b)))
        hot = rng.random(size) < a
        ranks = np.where(hot, rng.integers(0, n_hot, size),
                         rng.integers(min(n_hot, n_customers - 1), n_customers, size))
    order = np.random.default_rng(0).permutation(n_customers)  # same hot set everywhere
    return order[np.minimum(ranks, n_customers - 1)]


@dataclass(frozen=True)
class Workload:
    """Everything about the requests; the same in every client process."""

    mix: dict[str, float] = field(default_factory=lambda: {"decide": 1.0})
    customers: int = 100_000  #: customer ids C0000000 .. C{customers-1}
    skew: tuple[str, float, float] = ("zipf", 1.0, 0.0)
    channel: str = "web"
    placement: str = ""
    limit: int = 5
    #: decisions per DecideBatch call (consecutive customers of the draw)
    batch_size: int = 100
    #: Decide context; None: a varied demo-like context (country, device, basket)
    context: dict | None = None
    event_type: str = "page_view"  #: Track events: the demo catalog's page_view
    event_fields: dict | None = None  #: None: {"page": one of the demo's pages}
    seed: int = 1

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise WorkloadError(f"--customers must be >= 1, got {self.customers}")
        if self.batch_size < 1:
            raise WorkloadError(f"--batch-size must be >= 1, got {self.batch_size}")


def _value(v) -> pb.Value:
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return pb.Value(number_value=float(v))
    return pb.Value(string_value=str(v))


class Requests:
    """An endless, reproducible supply of (kind, request message) for one process.

    Messages are built ahead (a pool of 4,096 per kind, reused round-robin) so building
    them costs the client nothing while it measures. Track events get a unique
    ``event_id`` per send, so each is applied rather than deduplicated.
    """

    POOL = 4096

    def __init__(self, workload: Workload, process_index: int = 0):
        self.workload = workload
        rng = np.random.default_rng([workload.seed, process_index])
        kinds = list(workload.mix)
        self._kind_seq = [kinds[i] for i in rng.choice(
            len(kinds), self.POOL, p=[workload.mix[k] for k in kinds])]
        picks = draw_customers(workload.customers, workload.skew, self.POOL, rng)
        self._customers = [pb.Identifier(kind="customer_id", value=customer_id(int(i)))
                           for i in picks]
        self._prefix = f"lt-{os.getpid()}-{process_index}-{rng.integers(1 << 30):x}-"
        self._pools = {k: self._build(k, rng) for k in kinds if k != "decide_batch"}
        if "decide_batch" in kinds:
            self._pools["decide_batch"] = self._batches(
                self._pools.get("decide") or self._build("decide", rng))
        self._n = itertools.count()

    def _build(self, kind: str, rng) -> list:
        w = self.workload
        out = []
        for i, who in enumerate(self._customers):
            if kind == "decide":
                ctx = w.context if w.context is not None else {
                    "country": "FR", "device": DEVICES[i % 4], "basket": float(i % 300)}
                out.append(pb.DecideRequest(customer=who, channel=w.channel,
                                            placement=w.placement, limit=w.limit,
                                            context={k: _value(v) for k, v in ctx.items()}))
            elif kind == "track":
                fields = w.event_fields if w.event_fields is not None else {
                    "page": PAGES[i % len(PAGES)]}
                out.append(pb.Event(type=w.event_type, customer=who, channel=w.channel,
                                    attributes={k: _value(v) for k, v in fields.items()}))
            elif kind == "get_profile":
                out.append(pb.GetProfileRequest(customer=who))
            elif kind == "list_offers":
                out.append(pb.ListOffersRequest(channel=w.channel, placement=w.placement))
            else:  # upsert_profile: re-assert the identifier; no attribute is touched
                out.append(pb.UpsertProfileRequest(identifiers=[who]))
        return out

    def _batches(self, decides: list) -> list:
        """DecideBatch requests of ``batch_size`` consecutive Decide requests each."""
        size = self.workload.batch_size
        return [pb.DecideBatchRequest(requests=[decides[(i + j) % self.POOL]
                                                for j in range(size)])
                for i in range(0, self.POOL, size)]

    def next(self) -> tuple[str, object]:
        n = next(self._n)
        i = n % self.POOL
        kind = self._kind_seq[i]
        pool = self._pools[kind]
        msg = pool[(n // self.POOL + i) % len(pool)]
        if kind == "track":  # safe: the client serialises a message as it sends it
            msg.event_id = f"{self._prefix}{n}"
        return kind, msg
