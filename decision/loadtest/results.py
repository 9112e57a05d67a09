"""Merging the client processes' intervals into one result; the text and JSON reports.

The result is a plain dict (what ``--json`` writes); the text report is rendered from
that same dict, so the two always agree. Latencies are in microseconds in the JSON
and in milliseconds in the text.
"""

from __future__ import annotations

import math
from collections import Counter

from hdrh.histogram import HdrHistogram

from decision.loadtest.client import Load, histogram

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def summarize(h: HdrHistogram) -> dict:
    """p50/p90/p99/p99.9/max/mean of a histogram, microseconds (None when empty)."""
    if h.get_total_count() == 0:
        return {name: None for name, _ in PERCENTILES} | {"max": None, "mean": None}
    out = {name: float(h.get_value_at_percentile(p)) for name, p in PERCENTILES}
    out["max"] = float(h.get_max_value())
    out["mean"] = round(float(h.get_mean_value()), 1)
    return out


class Aggregate:
    """The merged view of all client processes' ticks."""

    def __init__(self, load: Load):
        self.load = load
        self.warm_ticks = math.ceil(load.warmup_s / load.interval_s - 1e-9)
        self.total: dict[str, HdrHistogram] = {}  # per RPC kind, measured ticks only
        self.all = histogram()
        self.lag = histogram()
        self.errors: Counter = Counter()  # "kind:CODE" -> n, measured ticks only
        self.warm_errors: Counter = Counter()
        self.timeline: dict[int, dict] = {}  # tick -> {"hist", "errors", "ok"}
        self.in_flight: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.done: list[dict] = []

    def add(self, tick: dict) -> None:
        k = tick["tick"]
        slot = self.timeline.setdefault(k, {"hist": histogram(), "errors": 0, "ok": 0})
        measured = k >= self.warm_ticks
        for kind, encoded in tick["hists"].items():
            h = HdrHistogram.decode(encoded)
            slot["hist"].add(h)
            slot["ok"] += h.get_total_count()
            if measured:
                self.total.setdefault(kind, histogram()).add(h)
                self.all.add(h)
        if tick["lag"] is not None and measured:
            self.lag.decode_and_add(tick["lag"])
        n_err = sum(tick["errors"].values())
        slot["errors"] += n_err
        (self.errors if measured else self.warm_errors).update(tick["errors"])
        self.in_flight[tick["process"]] = tick["in_flight"]
        self.sent[tick["process"]] = tick["sent"]

    def progress(self) -> dict:
        """Figures for the live line: the last complete interval's rate, totals so far."""
        so_far = histogram()
        for slot in self.timeline.values():
            so_far.add(slot["hist"])
        last = max(self.timeline) if self.timeline else None
        rate = self.timeline[last]["ok"] / self.load.interval_s if last is not None else 0.0
        s = summarize(so_far)
        return {"t": (last + 1) * self.load.interval_s if last is not None else 0.0,
                "rate": rate, "p50": s["p50"], "p99": s["p99"],
                "errors": sum(self.errors.values()) + sum(self.warm_errors.values()),
                "in_flight": sum(self.in_flight.values()), "sent": sum(self.sent.values())}

    def result(self, target: str, mix: dict) -> dict:
        load = self.load
        send_end = max((d["sending_ended_s"] for d in self.done), default=0.0)
        measured_s = max(1e-9, send_end - self.warm_ticks * load.interval_s)
        # throughput: completions while sending lasted (the drain tail is excluded)
        last_tick = math.ceil(send_end / load.interval_s - 1e-9)
        ok_in_window = sum(s["ok"] for k, s in self.timeline.items()
                           if self.warm_ticks <= k < last_tick)
        ok = self.all.get_total_count()
        errors = sum(self.errors.values())
        by_code: Counter = Counter()
        for key, n in self.errors.items():
            by_code[key.split(":", 1)[1]] += n
        by_rpc = {}
        for kind in mix:
            h = self.total.get(kind, histogram())
            errs = {key.split(":", 1)[1]: n for key, n in sorted(self.errors.items())
                    if key.split(":", 1)[0] == kind}
            by_rpc[kind] = {"ok": h.get_total_count(), "errors": errs,
                            "latency_us": summarize(h)}
        result = {
            "target": target,
            "mode": "open" if load.open_loop else "closed",
            "rate": load.rate or None,
            "concurrency": load.concurrency or None,
            "processes": load.processes,
            "connections": load.connections,
            "mix": {k: round(v, 4) for k, v in mix.items()},
            "warmup_s": self.warm_ticks * load.interval_s,
            "measured_s": round(measured_s, 3),
            "requests": ok + errors,
            "ok": ok,
            "errors": dict(sorted(by_code.items())),
            "error_count": errors,
            "unfinished": sum(d["unfinished"] for d in self.done),
            # the client's own CPU, in cores: on a shared machine, taken from the server
            "client_cpu_cores": round(sum(d["cpu_s"] for d in self.done)
                                      / max(1e-9, max(d["wall_s"] for d in self.done)), 2),
            "throughput_rps": round(ok_in_window / measured_s, 1),
            "latency_us": summarize(self.all),
            "by_rpc": by_rpc,
            "timeline": [
                {"t_s": round((k + 1) * load.interval_s, 3), "ok": s["ok"],
                 "errors": s["errors"], "warmup": k < self.warm_ticks,
                 **{n: v for n, v in summarize(s["hist"]).items()
                    if n in ("p50", "p99", "max")}}
                for k, s in sorted(self.timeline.items())],
        }
        if load.open_loop:
            result["send_lag_us"] = summarize(self.lag)
        return result

    def spectrum(self) -> list[tuple[float, float]]:
        """(percentile, latency us) points of the measured histogram, for the plot."""
        if self.all.get_total_count() == 0:
            return []
        return [(it.percentile_level_iterated_to, float(it.value_iterated_to))
                for it in self.all.get_percentile_iterator(5)]


def ratios(real: dict, floor: dict) -> dict:
    """Each latency percentile of the real server as a multiple of the floor's, and
    throughput as a fraction of the floor's."""
    out = {}
    for name in [n for n, _ in PERCENTILES] + ["max", "mean"]:
        a, b = real["latency_us"][name], floor["latency_us"][name]
        out[name] = round(a / b, 3) if a and b else None
    a, b = real["throughput_rps"], floor["throughput_rps"]
    out["throughput"] = round(a / b, 3) if a and b else None
    return out


def _ms(us) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


def render(result: dict) -> str:
    """The text report of a result (with its floor and ratios when present)."""
    lines = []
    floor = result.get("floor")
    load = (f"open loop at {result['rate']:g} req/s" if result["mode"] == "open"
            else f"closed loop, {result['concurrency']} in flight")
    lines.append(f"decision loadtest: {result['target']}, {load}, {result['processes']} client "
                 f"process(es) x {result['connections']} connection(s)")
    lines.append("mix: " + ", ".join(f"{k} {v:.0%}" for k, v in result["mix"].items())
                 + f"; measured {result['measured_s']:.1f} s after {result['warmup_s']:g} s "
                   "warm-up")
    lines.append("")
    head = f"{'':18}{'server':>12}"
    if floor:
        head += f"{'floor':>12}{'ratio':>9}"
    lines.append(head)
    names = [n for n, _ in PERCENTILES] + ["max"]
    for name in names:
        row = f"{'latency ' + name + ' (ms)':18}{_ms(result['latency_us'][name]):>12}"
        if floor:
            r = result["ratio"][name]
            row += f"{_ms(floor['latency_us'][name]):>12}{_fmt_ratio(r):>9}"
        lines.append(row)
    row = f"{'throughput (/s)':18}{result['throughput_rps']:>12.1f}"
    if floor:
        row += f"{floor['throughput_rps']:>12.1f}{_fmt_ratio(result['ratio']['throughput']):>9}"
    lines.append(row)
    row = f"{'requests':18}{result['requests']:>12d}"
    if floor:
        row += f"{floor['requests']:>12d}"
    lines.append(row)
    row = f"{'errors':18}{result['error_count']:>12d}"
    if floor:
        row += f"{floor['error_count']:>12d}"
    lines.append(row)
    for code, n in result["errors"].items():
        lines.append(f"  {code:16}{n:>12d}")
    if floor and floor["errors"]:
        lines.append("floor errors: " + ", ".join(f"{c} {n}" for c, n in floor["errors"].items()))
    if len(result["by_rpc"]) > 1:
        lines.append("")
        lines.append(f"{'by RPC':18}{'ok':>10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}  errors")
        for kind, r in result["by_rpc"].items():
            errs = ", ".join(f"{c} {n}" for c, n in r["errors"].items()) or "-"
            lat = r["latency_us"]
            lines.append(f"  {kind:16}{r['ok']:>10d}{_ms(lat['p50']):>10}{_ms(lat['p99']):>10}"
                         f"{_ms(lat['max']):>10}  {errs}")
    if result.get("send_lag_us") and result["send_lag_us"]["p99"] is not None:
        lag = result["send_lag_us"]
        lines.append("")
        lines.append(f"client send lag (actual send - schedule): p50 {_ms(lag['p50'])} ms, "
                     f"p99 {_ms(lag['p99'])} ms, max {_ms(lag['max'])} ms (counted in the "
                     "latency above)")
    lines.append("")
    lines.append(f"client CPU: {result['client_cpu_cores']:.2f} cores (on this machine, "
                 "not available to a server beside it)")
    if result.get("unfinished"):
        lines.append(f"unfinished requests at the end: {result['unfinished']}")
    if floor:
        lines.append("")
        lines.append("ratio: the server's figure / the empty-handler floor's, same load and "
                     "settings (throughput: the server's share of the floor's)")
    return "\n".join(lines)


def _fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"
