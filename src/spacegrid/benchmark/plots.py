"""PNG plots of a run's report (matplotlib, no display): throughput per target, and read and write latency
percentiles per target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from spacegrid.benchmark.workload import FSYNC_BEFORE_ACK

PERCENTILES: Final = ("p50", "p90", "p99", "p999")
COLORS: Final = {FSYNC_BEFORE_ACK: "#1f77b4"}  # other durability classes: ACK_COLOR
ACK_COLOR: Final = "#aec7e8"
DPI: Final = 120


def plot(report: dict[str, Any], directory: Path) -> list[Path]:
    """throughput.png and latency.png in `directory` (made if missing); the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    ran = {name: r for name, r in report["results"].items() if "error" not in r}
    return [_throughput(ran, report, directory / "throughput.png"), _latency(ran, directory / "latency.png")]


def _throughput(ran: dict[str, dict[str, Any]], report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(ran)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(names)), 4.5))
    values = [ran[n]["ops_per_s"] for n in names]
    bars = axes.bar(names, values, color=[COLORS.get(ran[n]["target"]["durability"], ACK_COLOR) for n in names])
    for bar, name in zip(bars, names):
        ratio = report["ratios"].get(name, {}).get("ops_per_s")
        label = f"{bar.get_height():,.0f}" + (f"\n{ratio:.2f}x" if ratio is not None else "")
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=8)
    axes.set_ylabel("operations / s")
    axes.set_title(f"ticket workload: throughput (dark: fsync before ack; ratios to {report['baseline']})")
    axes.set_ylim(0, max(values, default=1) * 1.25)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _latency(ran: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(ran)
    figure, panes = plt.subplots(1, 2, figsize=(max(8.0, 2.0 * len(names)), 4.5), sharey=True)
    width = 0.8 / len(PERCENTILES)
    for pane, side in zip(panes, ("read", "write")):
        for i, q in enumerate(PERCENTILES):
            values = [ran[n]["latency_ms"][side][q] or 0.0 for n in names]
            pane.bar([x + (i - (len(PERCENTILES) - 1) / 2) * width for x in range(len(names))], values, width,
                     label=q.replace("p999", "p99.9"))
        pane.set_xticks(range(len(names)), names, rotation=30, ha="right")
        pane.set_title(f"{side} latency")
        pane.set_yscale("log")
        pane.grid(axis="y", which="both", alpha=0.3)
    panes[0].set_ylabel("ms (log scale)")
    panes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
