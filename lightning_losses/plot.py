"""Per-loss curves from a logged run, without any service: one PNG, a panel per loss.

Reads a ``CSVLogger`` run directory (``metrics.csv``) and, where present, TensorBoard event files.
Needs matplotlib (the ``plot`` extra); importing this module without it raises ``ImportError``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from lightning_losses.logging.names import KINDS_FILE

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


def find_runs(log_dir: str | Path) -> dict[str, Path]:
    """The run directories under ``log_dir`` (itself, or ``lightning_logs/version_*`` and the
    like): each directory holding a ``metrics.csv`` or TensorBoard event files, named by its
    path relative to ``log_dir``. Several runs are drawn as several lines, never joined."""
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{str(root)!r} is not a directory; expected a CSVLogger or TensorBoardLogger run "
            "directory (holding metrics.csv or events.out.tfevents.* files), or a folder of them "
            "such as lightning_logs/"
        )
    found = {p.parent for p in root.rglob("metrics.csv")}
    if not found:
        found = {p.parent for p in root.rglob("events.out.tfevents.*")}
    if not found:
        raise FileNotFoundError(
            f"no metrics.csv or events.out.tfevents.* under {str(root)!r}; expected a CSVLogger "
            "or TensorBoardLogger run directory, or a folder of them such as lightning_logs/"
        )
    runs = {}
    for directory in sorted(found):
        name = directory.relative_to(root).as_posix()
        runs["." if name == "." else name] = directory
    return runs


def read_kinds(run_dir: str | Path) -> dict[str, str]:
    """``{name: "term" | "total" | "metric"}`` as the run recorded them (``KINDS_FILE``)."""
    path = Path(run_dir) / KINDS_FILE
    if not path.is_file():
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError):
        return {}


def panels(
    series: Series, kinds: dict[str, str] | None = None, run: str = ""
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Group logged names into panels: one per loss (train, val, test and epoch curves
    together), the total first; then one per metric (when the run recorded which names are
    metrics); then the weights that change, the gradient norms and the gradient cosines.
    ``run`` prefixes the curve labels (several runs in one figure)."""
    kinds = kinds or {}
    grouped: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    prefix = f"{run}: " if run else ""
    for name, points in series.items():
        stage, _, term = name.partition("/")
        if stage in SHARED_PANELS and term:
            if stage == "weight" and len({v for _, v in points}) <= 1:
                continue  # a constant weight: nothing to see
            grouped[SHARED_PANELS[stage]][f"{prefix}{term}"] = points
        elif stage in STAGES and term:
            epoch = term.endswith("_epoch")
            base = term.removesuffix("_epoch")
            panel = f"metric: {base}" if kinds.get(base) == "metric" else base
            grouped[panel][f"{prefix}{stage}{' (epoch)' if epoch else ''}"] = points
    return {key: grouped[key] for key in sorted(grouped, key=_panel_order)}


def _panel_order(key: str) -> tuple[Any, ...]:
    """The total first, then losses, then metrics, then the shared panels in their order."""
    last = list(SHARED_PANELS.values())
    return (key != "loss", last.index(key) if key in last else -1, key.startswith("metric: "), key)


def merge_panels(
    runs: dict[str, dict[str, dict[str, list[tuple[int, float]]]]],
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """One figure's panels from several runs' panels: a line per run in each panel."""
    merged: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for groups in runs.values():
        for panel, curves in groups.items():
            merged.setdefault(panel, {}).update(curves)
    return {key: merged[key] for key in sorted(merged, key=_panel_order)}


def _log_scale(curves: dict[str, list[tuple[int, float]]], mode: str) -> bool:
    values = [v for points in curves.values() for _, v in points if math.isfinite(v)]
    if mode == "never" or not values or min(values) <= 0:
        return False
    return mode == "always" or max(values) / min(values) >= 100.0


#: Each stage's line style, the same in every panel and for every run: with several runs a
#: curve's colour says which run it is, its style which stage.
STAGE_STYLES: dict[str, Any] = {"train": "-", "train (epoch)": ":", "val": "--", "test": "-."}
#: Line styles of the curves of a shared panel (a curve per term) beyond the first term's.
_TERM_STYLES = ("-", "--", ":", "-.")


def curve_styles(
    groups: dict[str, dict[str, list[tuple[int, float]]]], runs: list[str] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """``(panel, label) -> matplotlib line options`` for every curve of ``groups``.

    One run: a colour per stage (train, its epoch means, val, test), the same in every panel.
    Several runs (``runs``, the prefixes of their labels): a colour per run in every panel, and
    a line style per stage (:data:`STAGE_STYLES`), so that a run is followed across panels by
    its colour alone. In the shared panels (weights, gradient statistics) a curve is a term: a
    colour per term with one run, a line style per term with several.
    """
    shared = set(SHARED_PANELS.values())
    stage_colour = {stage: f"C{i}" for i, stage in enumerate(STAGE_STYLES)}
    styles: dict[tuple[str, str], dict[str, Any]] = {}
    for panel, curves in groups.items():
        terms: dict[str, int] = {}  # a shared panel's terms, in the order drawn
        for label, points in curves.items():
            run, rest = split_label(label, runs)
            few = len(points) < 30
            if panel in shared:
                index = terms.setdefault(rest, len(terms))
                style: dict[str, Any] = (
                    {"color": f"C{index % 10}", "linestyle": "-"}
                    if not runs
                    else {
                        "color": f"C{runs.index(run) % 10}",
                        "linestyle": _TERM_STYLES[index % len(_TERM_STYLES)],
                    }
                )
            else:
                colour = stage_colour.get(rest, "C9") if not runs else f"C{runs.index(run) % 10}"
                style = {"color": colour, "linestyle": STAGE_STYLES.get(rest, "-")}
                if few and rest != "train":
                    style["marker"] = "o"  # a few epoch or validation points: seen as points
            styles[(panel, label)] = style
    return styles


def split_label(label: str, runs: list[str] | None) -> tuple[str, str]:
    """``("version_0", "val")`` for the curve label ``"version_0: val"`` of one of ``runs``;
    ``("", label)`` with one run."""
    for run in runs or ():
        if label.startswith(f"{run}: "):
            return run, label[len(run) + 2 :]
    return "", label


def draw(
    groups: dict[str, dict[str, list[tuple[int, float]]]],
    title: str = "",
    log_y: str = "auto",
    runs: list[str] | None = None,
) -> Any:
    """The figure of :func:`plot_series` (a ``matplotlib.figure.Figure``), panels already
    grouped; ``runs``: the runs whose curves it holds, when several (see :func:`curve_styles`).
    With several runs one legend below the panels names the runs by colour and the stages by
    line style, instead of a legend of every run and stage in every panel."""
    styles = curve_styles(groups, runs)
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    height = 3.0 * rows + (0.4 if runs else 0.0)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, height), squeeze=False, layout="constrained"
    )
    stages: list[str] = []
    shared = set(SHARED_PANELS.values())
    for ax, (panel, curves) in zip(axes.flat, groups.items()):
        for label, points in curves.items():
            steps, values = zip(*sorted(points))
            style = styles[(panel, label)]
            ax.plot(steps, values, label=label, markersize=3, linewidth=1.4, **style)
            stage = split_label(label, runs)[1]
            if panel not in shared and stage not in stages:
                stages.append(stage)
        if _log_scale(curves, log_y):
            ax.set_yscale("log")
        ax.set_title("weighted total: loss" if panel == "loss" else panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if not runs or panel in shared:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    if runs:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=f"C{i % 10}", label=run) for i, run in enumerate(runs)]
        order = list(STAGE_STYLES)
        handles += [
            Line2D([], [], color="0.3", linestyle=STAGE_STYLES[stage], label=stage)
            for stage in sorted((s for s in stages if s in STAGE_STYLES), key=order.index)
        ]
        figure.legend(
            handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8
        )
    return figure


def plot_series(
    series: Series | dict[str, dict[str, list[tuple[int, float]]]],
    out: str | Path,
    title: str = "",
    log_y: str = "auto",
    grouped: bool = False,
    runs: list[str] | None = None,
) -> Path:
    """Draw one PNG with a panel per loss; returns the file written.

    ``series`` is a run's values (name -> points), or already ``grouped`` panels. ``log_y``:
    ``"auto"`` (a log axis where a panel's positive values span two decades or more),
    ``"always"`` or ``"never"``. ``runs``: the run names that prefix the curve labels of
    ``grouped`` panels of several runs (see :func:`merge_panels`), drawn a colour per run.
    """
    groups: dict[str, dict[str, list[tuple[int, float]]]] = (
        series if grouped else panels(series)  # type: ignore[assignment,arg-type]
    )
    if not groups:
        names = sorted(series)
        raise ValueError(
            f"no train/, val/ or test/ values to plot (found {names[:12]}); expected a run "
            "logged by a LossDictModule (or any run with train/... names)"
        )
    figure = draw(groups, title, log_y, runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_run(log_dir: str | Path, out: str | Path | None = None, log_y: str = "auto") -> Path:
    """Draw the per-loss curves of the run in ``log_dir`` (default ``log_dir/curves.png``); a
    folder of several runs (``lightning_logs/``) gets a line per run in each panel."""
    runs = find_runs(log_dir)
    out = Path(log_dir) / "curves.png" if out is None else Path(out)
    if len(runs) == 1:
        (directory,) = runs.values()
        groups = panels(read_run(directory), read_kinds(directory))
    else:
        groups = merge_panels(
            {name: panels(read_run(d), read_kinds(d), run=name) for name, d in runs.items()}
        )
    if not groups:
        every = sorted({n for d in runs.values() for n in read_run(d)})
        raise ValueError(
            f"no train/, val/ or test/ values to plot (found {every[:12]}); expected a run "
            "logged by a LossDictModule (or any run with train/... names)"
        )
    several = list(runs) if len(runs) > 1 else None
    return plot_series(groups, out, title=str(log_dir), log_y=log_y, grouped=True, runs=several)
