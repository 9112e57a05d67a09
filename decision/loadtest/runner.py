"""Runs a load over one or several client processes and merges what they measure.

``run_load`` is the library entry point (the CLI and ``benchmarks/`` use it):

    from decision.loadtest import Load, Target, Workload, run_load
    result = run_load(Target("127.0.0.1:50051"), Load(rate=2000, duration_s=10),
                      Workload(mix={"decide": 0.9, "track": 0.1}))
    print(result["latency_us"]["p99"], result["throughput_rps"])
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import time

from decision.loadtest.client import Load, LoadTestError, Target, run_client
from decision.loadtest.results import Aggregate
from decision.loadtest.workload import Workload

START_DELAY_S = 0.05  # between "go" and the first request, so every process is waiting


def _child(target, load, workload, index, out, go, start) -> None:
    def wait_go() -> int:
        go.wait()
        return start.value

    run_client(target, load, workload, index, out.put, wait_go)


def run_load(target: Target, load: Load, workload: Workload, progress=None,
             keep: dict | None = None) -> dict:
    """Run ``load`` against ``target``; return the result dict (see ``results``).

    ``progress(figures)`` is called after every interval with the live figures;
    ``keep``, when given, receives the ``Aggregate`` (for plots) under "aggregate".
    The clients are ``spawn``-ed processes: a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    aggregate = Aggregate(load)
    n = load.processes
    # Client processes even for one: the caller's threads (a test server, pytest, plots)
    # must not share the client's GIL, and a small fresh process has short GC pauses.
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    holder = ctx.Value("q", 0)
    workers = [ctx.Process(target=_child, name=f"loadtest-client-{i}",
                           args=(target, load, workload, i, out, go, holder), daemon=True)
               for i in range(n)]
    for w in workers:
        w.start()
    try:
        ready = 0
        while ready < n:
            msg = _get(out, workers)
            if msg[0] == "error":
                raise LoadTestError(msg[2])
            ready += msg[0] == "ready"
        holder.value = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        go.set()
        finished = 0
        last_tick = -1
        while finished < n:
            msg = _get(out, workers)
            if msg[0] == "tick":
                aggregate.add(msg[1])
                if progress is not None and msg[1]["tick"] > last_tick:
                    last_tick = msg[1]["tick"]
                    progress(aggregate.progress())
            elif msg[0] == "done":
                aggregate.done.append(msg[1])
                finished += 1
            elif msg[0] == "error":
                raise LoadTestError(msg[2])
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
    if keep is not None:
        keep["aggregate"] = aggregate
    return aggregate.result(target.address, workload.mix)


def _get(out, workers):
    while True:
        try:
            return out.get(timeout=1.0)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                raise LoadTestError("the load-test client processes exited without a "
                                    "result (see the messages above)") from None


def progress_line(stream=sys.stderr):
    """A ``progress`` callback that keeps one status line up to date (\\r)."""

    def show(p: dict) -> None:
        def ms(us):
            return "-" if us is None else f"{us / 1000:.2f}"

        stream.write(f"\r{p['t']:6.1f} s  {p['rate']:9.0f} req/s  p50 {ms(p['p50'])} ms  "
                     f"p99 {ms(p['p99'])} ms  errors {p['errors']}  in flight "
                     f"{p['in_flight']}   ")
        stream.flush()

    return show


def max_rate_at(target: Target, workload: Workload, p99_us: float, start_rate: float,
                base: Load, step: float = 1.25, refine: int = 2, log=None) -> dict:
    """The highest open-loop rate whose p99 stays within ``p99_us`` with no errors and
    the rate actually achieved (within 5%): step the rate up by ``step`` from
    ``start_rate`` until it breaks, then bisect ``refine`` times between the last pass
    and the first failure. Returns {"rate", "result" (of that rate), "steps"}."""
    steps = []

    def attempt(rate: float) -> bool:
        load = Load(rate=rate, duration_s=base.duration_s, warmup_s=base.warmup_s,
                    timeout_s=base.timeout_s, processes=base.processes,
                    connections=base.connections, interval_s=base.interval_s)
        r = run_load(target, load, workload)
        p99 = r["latency_us"]["p99"]
        ok = (p99 is not None and p99 <= p99_us and r["error_count"] == 0
              and r["throughput_rps"] >= 0.95 * rate)
        steps.append({"rate": round(rate, 1), "p99_us": p99, "throughput_rps":
                      r["throughput_rps"], "errors": r["error_count"], "pass": ok,
                      "result": r})
        if log is not None:
            log(f"  {rate:8.0f} req/s: p99 {p99 / 1000 if p99 else float('nan'):.3f} ms, "
                f"achieved {r['throughput_rps']:.0f}/s, errors {r['error_count']}: "
                f"{'within' if ok else 'over'}")
        return ok

    good, bad = 0.0, None
    rate = start_rate
    while not attempt(rate):  # too fast already: halve until a rate passes
        bad = rate
        rate /= 2
        if rate < 10:
            return {"rate": 0.0, "result": None,
                    "steps": [{k: v for k, v in s.items() if k != "result"} for s in steps]}
    good = rate
    rate *= step
    while bad is None or rate < bad:
        if attempt(rate):
            good = rate
            rate *= step
        else:
            bad = rate
            break
    for _ in range(refine):
        mid = (good + bad) / 2 if good else bad / 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    best = next((s for s in reversed(steps) if s["pass"] and s["rate"] == round(good, 1)),
                None)
    return {"rate": round(good, 1), "result": best["result"] if best else None,
            "steps": [{k: v for k, v in s.items() if k != "result"} for s in steps]}
