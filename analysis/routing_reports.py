"""The routing reports: policies side by side with their Pareto fronts (table and figure), misroutes per task
family with examples, and the rerun that completes a run for a policy (query-id files and commands)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import axes as axes_
from analysis import completeness, plots
from analysis.aggregate import aggregation
from analysis.load import read_job
from analysis.routing import ROUTES, Answers, Outcome, pareto
from analysis.routing_policies import Policy, decide, needs, policy_label, safe_name
from analysis.scores import adapter_tasks
from analysis.tables import Cell, Column, Row, Table

LEVELS = ("tasks", "categories", "overall")
FRONTS = ("S2 %", "$")  # accuracy against the S2 share, and against dollars per query


@dataclass(frozen=True)
class Simulated:
    answers: Answers
    policy: Policy
    outcomes: list[Outcome]  # one; a threshold sweep: one per θ

    def fronts(self) -> list[str]:
        """Per outcome, the fronts it is on ("S2 %", "$"); only a sweep's points are ranked."""
        if not self.policy.sweep:
            return [""] * len(self.outcomes)
        overall = np.array([o.scores.get("overall", math.nan) for o in self.outcomes])
        on = [pareto(np.array([o.s2_share for o in self.outcomes]), overall),
              pareto(np.array([o.cost_usd for o in self.outcomes]), overall)]  # fmt: skip
        return [", ".join(f for f, mask in zip(FRONTS, on, strict=True) if mask[i]) for i in range(len(overall))]


def simulate_table(
    results: Sequence[Simulated], levels: Sequence[str] = LEVELS, latency: str = "measured", caption: str = "",
    label: str = "",
) -> Table:  # fmt: skip
    """One row per job and policy; of a threshold sweep, the points on a Pareto front (its first point when no
    query could be scored, so that its missing count shows)."""
    names: list[str] = []
    for result in results:
        for outcome in result.outcomes:
            names += [n for level in levels for n in outcome.levels.get(level, ()) if n not in names]
    stub, job_labels = _job_labels([r.answers for r in results])
    rows = []
    for result in results:
        fronts = result.fronts()
        for i, (outcome, front) in enumerate(zip(result.outcomes, fronts, strict=True)):
            if result.policy.sweep and not front and (i or any(fronts)):
                continue
            cells = [Cell(float(outcome.n)), Cell(float(outcome.missing))]
            cells += [Cell(outcome.scores.get(n)) for n in names]
            cells += [Cell(100 * outcome.s2_share), Cell(outcome.latency_s), Cell(outcome.cost_usd), Cell(text=front)]
            labels = (*job_labels[result.answers.job], policy_label(result.policy, outcome))
            rows.append(Row(labels, tuple(cells), block=result.answers.job, section=result.answers.job))
    columns = (Column("n", digits=0), Column("missing", digits=0), *(Column(n, rank="high") for n in names),
               Column("S2 %"), Column(f"{latency} lat s", rank="low", digits=3),
               Column("$/query", rank="low", digits=5), Column("front", numeric=False))  # fmt: skip
    return Table((*stub, "policy"), columns, tuple(rows), caption, label, _notes(results))


def misroutes_table(
    answers: Sequence[Answers], policy: Policy, model: Path | None = None, examples: int = 3, caption: str = "",
    label: str = "",
) -> tuple[Table, list[str]]:  # fmt: skip
    """Per job and task family, the queries the policy sent to S1 where S2 scored higher, and the reverse (over
    queries both routes answered; a failed answer scores 0 here), with up to `examples` of each as Markdown."""
    if policy.sweep:
        raise ValueError(f"--policy {policy.text}: misroutes need one θ, e.g. {policy.text}@0.5")
    stub, job_labels = _job_labels(answers)
    rows, shown = [], []
    for job in answers:
        frame, decided = job.frame, decide(policy, job, model)
        both = job.asked("S1") & job.asked("S2")
        s1, s2 = (np.nan_to_num(frame[f"{r}.score"].to_numpy(float)) for r in ROUTES)
        wrong = {"S1 taken, S2 better": both & ~decided.to_s2 & (s2 > s1),
                 "S2 taken, S1 better": both & decided.to_s2 & (s1 > s2)}  # fmt: skip
        tasks = list(dict.fromkeys([*adapter_tasks(job.dataset), *sorted(frame["task"].unique())]))
        for task in [t for t in tasks if (frame["task"] == t).any()] + ["all"]:
            mine = np.ones(len(frame), bool) if task == "all" else (frame["task"] == task).to_numpy()
            n = int((both & mine).sum())
            cells = [Cell(float(n))]
            for mask in wrong.values():
                count = int((mask & mine).sum())
                cells += [Cell(float(count)), Cell(100 * count / n if n else None)]
            cells.append(Cell(float((mine & ~both).sum())))
            rows.append(Row((*job_labels[job.job], task), tuple(cells), block=job.job, section=job.job))
            if task == "all":
                continue
            for what, mask in wrong.items():
                for i in np.flatnonzero(mask & mine)[:examples]:
                    shown.append(_example(job, task, what, frame.iloc[i], decided.reasons[i]))
    columns = (Column("n", digits=0), Column("S1 taken, S2 better", digits=0), Column("%", rank="low"),
               Column("S2 taken, S1 better", digits=0), Column("%", rank="low"),
               Column("not compared", digits=0))  # fmt: skip
    notes = (f"Policy {policy.text}. n: queries both routes answered (compared); a misroute is a query the policy "
             "sent to the route that scored lower. not compared: queries lacking a route's answer (see `routing "
             "rerun`).",)  # fmt: skip
    return Table((*stub, "task"), columns, tuple(rows), caption, label, notes), shown


def rerun(answers: Sequence[Answers], policy: Policy, model: Path | None = None) -> list[str]:
    """Write <job>/rerun-<policy>-<route>.txt (the query ids the policy needs on a route that never answered
    them) and return, per job and route, the command that asks only those; or why there is nothing to ask."""
    lines = []
    for job in answers:
        need_s1, need_s2 = needs(policy, decide(policy, job, model))
        ids = job.frame["query_id"].to_numpy(object)
        found = False
        for route, need in zip(ROUTES, (need_s1, need_s2), strict=True):
            missing = ids[need & ~job.asked(route)]
            if not len(missing):
                continue
            found = True
            path = job.path / f"rerun-{safe_name(policy)}-{route}.txt"
            path.write_text("".join(f"{q}\n" for q in missing), encoding="utf-8")
            lines.append(f"{job.job}: {len(missing)} queries need {route} under {policy.text}; wrote {path}")
            lines.append(f"  {rerun_command(job, route, path)}")
        if not found:
            lines.append(f"{job.job}: nothing to rerun, every answer {policy.text} needs is there")
    return lines


def rerun_command(job: Answers, route: str, ids_file: Path) -> str:
    """The job's own command with the scheduler forced to `route`, asking only the queries in `ids_file`, into
    outputs/<run>-rerun/ (give that folder to `simulate --with`)."""
    overrides = completeness.job_overrides(read_job(job.path, job.job))
    kept = [o for o in overrides if not _is_scheduler(o.split("=", 1)[0].lstrip("+~"))]
    quote = "'" if '"' in str(ids_file) else '"'  # Hydra would split an unquoted path at "," and "="
    extra = [f"scheduler=force_{route.lower()}", f"run.only_queries={quote}{ids_file}{quote}"]
    run = job.path.parent
    command = completeness.resume_command([*kept, *extra], run.parent / f"{run.name}-rerun")
    if not overrides:  # no status.json or .hydra/overrides.yaml: the user knows the rest of the command
        command += "  # add the overrides that made this job: " + shlex.quote(str(job.path))
    return command


def plot(results: Sequence[Simulated], x: str, out: Path) -> list[Path]:
    """Accuracy against the S2 share (x="s2") or dollars per query (x="cost"), a panel per job: every threshold
    point, the front as a line, each other policy as a labelled marker. Writes out.png and out.pdf."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    jobs = list(dict.fromkeys(r.answers.job for r in results))
    plt.rcParams.update({"font.size": 8})
    figure, panels = plt.subplots(1, len(jobs), figsize=(3.4 * len(jobs), 2.8), squeeze=False)
    for panel, job in zip(panels[0], jobs, strict=True):
        for result in (r for r in results if r.answers.job == job):
            xs = np.array([100 * o.s2_share if x == "s2" else o.cost_usd for o in result.outcomes])
            ys = np.array([o.scores.get("overall", math.nan) for o in result.outcomes])
            if result.policy.sweep:
                front = pareto(xs, ys)
                panel.scatter(xs, ys, s=6, color="0.7", zorder=2)
                ordered = np.argsort(xs[front], kind="stable")
                panel.plot(xs[front][ordered], ys[front][ordered], marker="o", markersize=3, linewidth=1,
                           drawstyle="steps-post", label=result.policy.text, zorder=3)  # fmt: skip
            else:
                panel.scatter(xs, ys, s=18, zorder=4)
                panel.annotate(result.policy.text, (xs[0], ys[0]), xytext=(3, 3), textcoords="offset points",
                               fontsize=6)  # fmt: skip
        panel.set_xlabel("queries sent to S2 (%)" if x == "s2" else "dollars per query")
        dataset = next(r.answers.dataset for r in results if r.answers.job == job)
        panel.set_ylabel(f"overall ({aggregation(dataset, adapter_tasks(dataset)).unit})")
        panel.set_title(job, fontsize=7)
        panel.grid(True, linewidth=0.3, alpha=0.5)
        if any(r.policy.sweep for r in results if r.answers.job == job):
            panel.legend(fontsize=6, frameon=False)
    figure.tight_layout()
    return plots.save(figure, out)


def _is_scheduler(key: str) -> bool:
    return key == "scheduler" or key.startswith("scheduler.") or key.endswith("@scheduler.backend")


def _job_labels(answers: Sequence[Answers]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Label columns that tell the jobs apart (their differing config keys; the folder when none differ)."""
    answers = list({a.job: a for a in answers}.values())
    if len(answers) == 1:
        return (), {answers[0].job: ()}
    axes = axes_.detect({a.job: axes_.flatten(a.config) for a in answers})
    if not axes:
        return ("job",), {a.job: (a.job,) for a in answers}
    values = {a.job: tuple(axes_.value_text(axes_.flatten(a.config).get(k)) for k in axes) for a in answers}
    return tuple(axes_.label(k) for k in axes), values


def _example(job: Answers, task: str, what: str, row: pd.Series, reason: str) -> str:
    def answer(route: str) -> str:
        text = next((t for t in (row[f"{route}.parsed"], row[f"{route}.response"]) if isinstance(t, str) and t), "")
        return f"{text!r} (score {row[f'{route}.score']:g})"

    return (f"- {job.job} · {task} · {what}: {row['query_id']} at {row['time_s']:g} s, {row['question']!r}: "
            f"S1 {answer('S1')}, S2 {answer('S2')}; reason: {reason}")  # fmt: skip


def _notes(results: Sequence[Simulated]) -> tuple[str, ...]:
    notes = []
    for dataset in dict.fromkeys(r.answers.dataset for r in results):
        agg = aggregation(dataset, adapter_tasks(dataset))
        notes.append(f"{agg.benchmark}: {agg.unit}; {agg.rule}.")
    notes.append(
        "Replayed offline on the recorded answers. n: queries scored; missing: queries left out because a route "
        "the policy needs never answered them (`routing rerun` lists them). Cost and latency: the routes a policy "
        "uses (threshold:confidence pays S1, and S2 when it escalates; recorded pays what the run paid). A "
        "threshold sweep shows its points on the Pareto front of accuracy against the S2 share or $/query."
    )
    jobs = {r.answers.job: r.answers for r in results}.values()
    if filled := sum(a.filled for a in jobs):
        notes.append(f"{filled} route answers were taken from --with folders.")
    if any(r.policy.cascade for r in results) and (
        unstated := sum(int((a.asked("S1") & a.frame["S1.confidence"].isna().to_numpy()).sum()) for a in jobs)
    ):
        notes.append(f"{unstated} S1 answers hold no confidence (the backend gave none, or the run did not ask for "
                     "one): threshold:confidence escalates them at every threshold, as the cascade does.")  # fmt: skip
    reads_text = any(r.policy.kind == "replay" or r.policy.name in ("semantic", "classifier") for r in results)
    if reads_text and (untold := sum(int((a.frame["question"] == "").sum()) for a in jobs)):
        notes.append(f"{untold} records hold no question text (written before records kept it): replayed policies "
                     "saw an empty question there.")  # fmt: skip
    return tuple(notes)
