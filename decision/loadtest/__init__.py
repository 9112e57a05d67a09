"""The load-test harness (``decision loadtest``), usable as a library.

- ``workload``  what is sent: the RPC mix, skewed customers, prebuilt requests.
- ``client``    one client process: open loop (on schedule) or closed loop.
- ``runner``    several client processes, merged; the rate search.
- ``results``   HDR histograms -> the result dict, the text report, floor ratios.
- ``servers``   the empty-handler floor (and a decision server) as subprocesses.
- ``plots``     latency over time and the percentile spectrum, as PNG.
"""

from decision.loadtest.client import Load, LoadTestError, Target
from decision.loadtest.results import ratios, render
from decision.loadtest.runner import max_rate_at, progress_line, run_load
from decision.loadtest.workload import Workload, WorkloadError, parse_mix, parse_skew

__all__ = ["Load", "LoadTestError", "Target", "Workload", "WorkloadError", "max_rate_at",
           "parse_mix", "parse_skew", "progress_line", "ratios", "render", "run_load"]
