"""Figures from the records: accuracy against latency or cost (one point per configuration), and how the memory
grows with stream time. Each is written as PNG and PDF (no creation date, so reruns give the same PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import axes as axes_  # noqa: E402
from analysis.causes import ERRORS  # noqa: E402
from analysis.load import Run  # noqa: E402
from analysis.scores import score_jobs  # noqa: E402

KINDS = ("accuracy-vs-latency", "accuracy-vs-cost", "memory-growth")


def plot(run: Run, kind: str, out: Path, policy: str = "official", latency: str = "auto") -> list[Path]:
    """Draw `kind` and write out.png and out.pdf; returns the written paths."""
    if kind not in KINDS:
        raise ValueError(f"plot kind {kind!r}: choose one of {', '.join(KINDS)}")
    plt.rcParams.update({"font.size": 8})
    if kind == "memory-growth":
        figure = _memory_growth(run)
    else:
        figure = _accuracy_vs(run, "cost" if kind == "accuracy-vs-cost" else "latency", policy, latency)
    return save(figure, out)


def save(figure: plt.Figure, out: Path) -> list[Path]:
    """Writes out.png and out.pdf (no creation date: reruns give the same PDF), closes the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    figure.savefig(paths[0], dpi=200, bbox_inches="tight", metadata={"Software": None})
    figure.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(figure)
    return paths


def _accuracy_vs(run: Run, x_kind: str, policy: str, latency: str) -> plt.Figure:
    scored = score_jobs(run, policy)
    answered = run.records[~run.records["cause"].isin(ERRORS)]
    by_job = answered.groupby("job", observed=True)
    if x_kind == "cost":
        x_values, x_label = by_job["cost_usd"].mean(), "dollars per query"
    else:
        modelled = answered["modelled_latency_s"].notna().all() and len(answered) > 0
        use_modelled = latency == "modelled" or (latency == "auto" and modelled)
        column = "modelled_latency_s" if use_modelled else "latency_s"
        x_values = by_job[column].mean()
        x_label = "modelled latency per query (s)" if use_modelled else "wall-clock latency per query (s)"
    datasets = sorted({s.dataset for s in scored.values()})
    others = [a for a in run.axes if a != "dataset.name"]
    labels = run.labels(others)
    figure, panels = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 2.8), squeeze=False)
    for panel, dataset in zip(panels[0], datasets, strict=True):
        jobs = [j for j, s in scored.items() if s.dataset == dataset and j in x_values.index]
        xs = np.array([x_values[j] for j in jobs], float)
        ys = np.array([scored[j].scores["overall"] for j in jobs], float)
        panel.scatter(xs, ys, s=18, color="tab:blue", zorder=3)
        names: dict[tuple[float, float], list[str]] = {}  # configurations on the same point share one label
        for x, y, job in zip(xs, ys, jobs, strict=True):
            names.setdefault((round(x, 12), round(y, 12)), []).append(", ".join(labels.loc[job]) if others else job)
        for (x, y), texts in names.items():
            panel.annotate("\n".join(texts), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
        panel.set_xlabel(x_label)
        panel.set_ylabel(f"overall ({scored[jobs[0]].aggregation.unit})" if jobs else "overall")
        panel.set_title(scored[jobs[0]].aggregation.benchmark if jobs else dataset)
        panel.grid(True, linewidth=0.3, alpha=0.5)
    figure.tight_layout()
    return figure


def _memory_growth(run: Run) -> plt.Figure:
    """Mean memory (frames held, and megabytes) at each query time, one line per configuration."""
    records = run.records[~run.records["cause"].isin(ERRORS)]
    labels = run.labels()
    figure, (frames, size) = plt.subplots(1, 2, figsize=(7.0, 2.8))
    bins = np.unique(np.floor(records["time_s"].to_numpy(float)))
    for job in sorted(run.jobs):
        mine = records[records["job"] == job]
        if mine.empty:
            continue
        second = np.floor(mine["time_s"].to_numpy(float))
        grouped = pd.DataFrame({"t": second, "frames": mine["memory_frames"].to_numpy(float),
                                "mb": mine["memory_bytes"].to_numpy(float) / 1e6}).groupby("t").mean()  # fmt: skip
        name = ", ".join(f"{axes_.label(a)}={labels.loc[job, a]}" for a in run.axes) or job
        frames.plot(grouped.index, grouped["frames"], linewidth=1, label=name)
        size.plot(grouped.index, grouped["mb"], linewidth=1, label=name)
    for panel, what in ((frames, "frames held"), (size, "memory (MB)")):
        panel.set_xlabel("stream time of the query (s)")
        panel.set_ylabel(what)
        panel.grid(True, linewidth=0.3, alpha=0.5)
        if len(bins):
            panel.set_xlim(bins.min(), bins.max() + 1)
    frames.legend(fontsize=6, frameon=False)
    figure.tight_layout()
    return figure
