"""Per-loss curves from a logged run, without any service: one PNG, a panel per loss.

Reads a ``CSVLogger`` run directory (``metrics.csv``) and, where present, TensorBoard event files.
Needs matplotlib (the ``plot`` extra); importing this module without it raises ``ImportError``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Series = dict[str, list[tuple[int, float]]]
STAGES = ("train", "val", "test")
#: Prefixes whose names share one panel (a curve per term), in the order they are drawn, last.
SHARED_PANELS = {
    "weight": "weights",
    "grad_norm": "gradient norm per term",
    "grad_cos": "gradient cosine per pair",
}


def read_csv_run(log_dir: str | Path) -> Series:
    """Every logged name -> ``[(step, value), ...]`` from the run's ``metrics.csv`` files."""
    series: Series = defaultdict(list)
    for path in sorted(Path(log_dir).rglob("metrics.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = int(float(row.get("step") or 0))
                for name, cell in row.items():
                    if name in ("step", "epoch") or cell in ("", None):
                        continue
                    series[name].append((step, float(cell)))
    return dict(series)


def read_tensorboard_run(log_dir: str | Path) -> Series:
    """Every scalar tag -> ``[(step, value), ...]`` from TensorBoard event files, if any."""
    files = list(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: Series = defaultdict(list)
    for directory in sorted({f.parent for f in files}):
        events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series[tag] += [(e.step, e.value) for e in events.Scalars(tag)]
    return dict(series)


def read_run(log_dir: str | Path) -> Series:
    """CSV values where a ``metrics.csv`` exists, else TensorBoard's."""
    return read_csv_run(log_dir) or read_tensorboard_run(log_dir)


def panels(series: Series) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Group logged names into panels: one per loss or metric (train, val, test and epoch curves
    together), the total first; then one panel each for the weights, the gradient norms and the
    gradient cosines."""
    grouped: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for name, points in series.items():
        stage, _, term = name.partition("/")
        if stage in SHARED_PANELS and term:
            grouped[SHARED_PANELS[stage]][term] = points
        elif stage in STAGES and term:
            epoch = term.endswith("_epoch")
            base = term.removesuffix("_epoch")
            grouped[base][f"{stage}{' (epoch)' if epoch else ''}"] = points
    last = list(SHARED_PANELS.values())
    order = sorted(grouped, key=lambda k: (k != "loss", last.index(k) if k in last else -1, k))
    return {key: grouped[key] for key in order}


def plot_series(series: Series, out: str | Path, title: str = "") -> Path:
    """Draw ``series`` into one PNG with a panel per loss; returns the file written."""
    groups = panels(series)
    if not groups:
        raise ValueError(f"no train/, val/ or test/ values to plot in {sorted(series)}")
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (panel, curves) in zip(axes.flat, groups.items()):
        for label, points in curves.items():
            steps, values = zip(*sorted(points))
            style = "o-" if len(points) < 30 and not label.startswith("train") else "-"
            ax.plot(steps, values, style, label=label, markersize=3, linewidth=1.4)
        ax.set_title("weighted total: loss" if panel == "loss" else panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_run(log_dir: str | Path, out: str | Path | None = None) -> Path:
    """Read the run in ``log_dir`` and draw its per-loss curves (default ``log_dir/curves.png``)."""
    out = Path(log_dir) / "curves.png" if out is None else Path(out)
    return plot_series(read_run(log_dir), out, title=str(log_dir))
