"""Draws bench/results/latest.png from the bench's JSON files.

Left: the latest run's time-to-Ready curve (share of objects Ready against seconds since each was
created), with the floor's time for the same N. Middle: all-Ready time and the floor against N,
from every fleet-n*.json. Right: steady EC2 calls per poll and peak RSS against N.
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = pathlib.Path(sys.argv[1])
latest = json.loads((results / "latest.json").read_text())
runs = sorted(
    (json.loads(p.read_text()) for p in results.glob("fleet-n*.json")),
    key=lambda r: r["n"],
)

fig, (curve, scale, cost) = plt.subplots(1, 3, figsize=(15, 4.5))

seconds = latest["ready_curve_seconds"]
curve.plot(seconds, range(len(seconds)), label=f"ec2-operator, N={latest['n']}")
curve.axvline(latest["floor_seconds"], color="grey", linestyle="--", label="floor (emulator alone, all N)")
curve.set_xlabel("seconds from creation to Ready")
curve.set_ylabel("objects Ready (%)")
curve.set_title("Time to Ready")
curve.legend(loc="lower right")

ns = [r["n"] for r in runs]
scale.plot(ns, [r["create_seconds"] for r in runs], "o-", label="all Ready")
scale.plot(ns, [r["floor_seconds"] for r in runs], "s--", color="grey", label="floor")
# A run stopped before its delete phase ended (N=10000 here) has no delete time.
deleted = [r for r in runs if r.get("delete_seconds") is not None]
scale.plot([r["n"] for r in deleted], [r["delete_seconds"] for r in deleted], "^-", label="all deleted")
scale.set_xscale("log")
scale.set_yscale("log")
scale.set_xlabel("objects (N)")
scale.set_ylabel("seconds")
scale.set_title("Create and delete against N")
scale.legend()

cost.plot(ns, [r["steady_calls_per_poll"] or 0 for r in runs], "o-", label="EC2 calls per poll (steady)")
cost.set_xscale("log")
cost.set_xlabel("objects (N)")
cost.set_ylabel("calls per poll")
memory = cost.twinx()
memory.plot(ns, [r["peak_rss_mib"] for r in runs], "s-", color="tab:red", label="peak RSS (MiB)")
memory.set_ylabel("MiB")
cost.set_title("Steady cost and memory against N")
lines = cost.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]
cost.legend(lines, [line.get_label() for line in lines], loc="upper left")
cost.set_ylim(bottom=0)
memory.set_ylim(bottom=0)

fig.tight_layout()
out = results / "latest.png"
fig.savefig(out, dpi=100)
print(f"plot: wrote {out}")
