"""PNG plots of a load test: latency over time, and the percentile spectrum.

matplotlib (Agg backend, no display needed) is imported only when plots are asked for.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plots(out_dir: Path, runs: dict[str, tuple[dict, list]], title: str) -> list[Path]:
    """``runs``: label -> (result dict, spectrum points). Writes
    ``latency-over-time.png`` and ``percentiles.png``; returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]

    fig, (lat, thr) = plt.subplots(2, 1, figsize=(10, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    for (label, (result, _)), colour in zip(runs.items(), colours):
        tl = result["timeline"]
        t = [p["t_s"] for p in tl]
        for key, style in (("p50", "-"), ("p99", "--"), ("max", ":")):
            ys = [p[key] / 1000 if p[key] is not None else float("nan") for p in tl]
            lat.plot(t, ys, style, color=colour, label=f"{label} {key}")
        interval = (t[1] - t[0]) if len(t) > 1 else 1.0
        thr.plot(t, [p["ok"] / interval for p in tl], color=colour, label=label)
        warm = [p["t_s"] for p in tl if p["warmup"]]
        if warm:
            lat.axvspan(0, max(warm), color="0.9")
    lat.set_yscale("log")
    lat.set_ylabel("latency per interval (ms)")
    lat.set_title(f"{title}\n(grey: warm-up, not counted)")
    lat.legend(fontsize=8, ncol=2)
    lat.grid(True, which="both", alpha=0.3)
    thr.set_ylabel("answers/s")
    thr.set_xlabel("time since start (s), by completion")
    thr.grid(True, alpha=0.3)
    thr.legend(fontsize=8)
    fig.tight_layout()
    timeline_png = out_dir / "latency-over-time.png"
    fig.savefig(timeline_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    for (label, (_, spectrum)), colour in zip(runs.items(), colours):
        pts = [(p, v) for p, v in spectrum if p < 100.0]
        if pts:
            ax.plot([1 / (1 - p / 100) for p, _ in pts], [v / 1000 for _, v in pts],
                    color=colour, label=label)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency by percentile (measured part)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    spectrum_png = out_dir / "percentiles.png"
    fig.savefig(spectrum_png, dpi=100)
    plt.close(fig)
    return [timeline_png, spectrum_png]
