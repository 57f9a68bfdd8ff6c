"""The run-level subcommands of `python -m analysis`: every table and figure from a run's stored records.

python -m analysis completeness outputs/<run>                       # exit 1 while anything is incomplete
python -m analysis table outputs/<run> [--rows router,memory] [--cols dataset] [--format md|latex|csv] [-o FILE]
python -m analysis ablation outputs/<run> --axis router [--baseline uniform]
python -m analysis efficiency outputs/<run>
python -m analysis plot outputs/<run> --kind accuracy-vs-latency [-o figures/acc_latency]
python -m analysis paper outputs/<run> --spec tables.yaml -o paper/tables/
python -m analysis routing simulate|misroutes|rerun outputs/<run> --policy ...   # see analysis/routing_cli.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from analysis import routing_cli
from analysis.aggregate import METRICS, POLICIES
from analysis.tables import FORMATS

LEVELS = ("tasks", "categories", "overall")
NAMES = ("completeness", "table", "ablation", "efficiency", "plot", "paper", "routing")
PLOT_KINDS = ("accuracy-vs-latency", "accuracy-vs-cost", "memory-growth")


def add(commands: Any) -> None:
    """Add the subcommands to the parser's subparsers."""
    completeness = commands.add_parser("completeness", help="done / partial / failed / missing per cell and shard")
    completeness.add_argument("run", type=Path, help="outputs/<run.name>/")
    completeness.add_argument("--json", action="store_true", help="the report as JSON")
    completeness.add_argument("--failed-ok", action="store_true", help="exit 0 when the only problems are errors")

    table = commands.add_parser("table", help="the main results table (official aggregation per benchmark)")
    _runs(table)
    table.add_argument("--rows", type=_keys, help="row axes, comma-separated (default: all but the dataset)")
    table.add_argument("--cols", type=_keys, help="column-group axes (default: the dataset, when it varies)")
    table.add_argument("--levels", type=_keys, default=list(LEVELS), help="tasks,categories,overall")
    _scoring(table)
    _output(table)

    ablation = commands.add_parser("ablation", help="deltas against a baseline with 95%% CIs and paired tests")
    _runs(ablation)
    ablation.add_argument("--axis", required=True, help="router, memory, scheduler, backend or any axis key")
    ablation.add_argument("--baseline", help="the axis value to compare with (default: the first)")
    ablation.add_argument("--levels", type=_keys, default=["overall"], help="tasks,categories,overall")
    ablation.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of videos")
    ablation.add_argument("--permutations", type=int, default=5000, help="random swaps for the paired test")
    ablation.add_argument("--seed", type=int, default=0)
    _scoring(ablation)
    _output(ablation)

    efficiency = commands.add_parser("efficiency", help="latency, tokens, frames, cost and S2 share per route")
    _runs(efficiency)
    _output(efficiency, incomplete=False)

    plot = commands.add_parser("plot", help="a figure as PNG and PDF")
    _runs(plot)
    plot.add_argument("--kind", required=True, choices=PLOT_KINDS)
    plot.add_argument("-o", "--output", type=Path, help="path without suffix (default: figures/<run>/<kind>)")
    plot.add_argument("--latency", choices=("auto", "wall", "modelled"), default="auto",
                      help="auto: modelled latency where every answer has one, else wall-clock")  # fmt: skip
    plot.add_argument("--failures", choices=POLICIES, default="official")

    paper = commands.add_parser("paper", help="the tables of a YAML spec as .tex and .md files")
    paper.add_argument("runs", type=Path, nargs="*", help="runs for tables whose spec names none")
    paper.add_argument("--spec", type=Path, required=True, help="the tables (see analysis/paper.py)")
    paper.add_argument("-o", "--output", type=Path, required=True, help="folder for <name>.tex and <name>.md")
    paper.add_argument("--allow-incomplete", action="store_true", help="render incomplete cells, marked")
    routing_cli.add(commands)


def run(args: argparse.Namespace) -> int:
    from analysis.results import Incomplete

    try:
        return _dispatch(args)
    except Incomplete as e:
        print(f"analysis {args.command}: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # DataError is a ValueError
        print(f"analysis {args.command}: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from analysis.load import load

    if args.command == "routing":
        return routing_cli.run(args)
    if args.command == "paper":
        from analysis.paper import render_spec

        written = render_spec(args.spec, args.output, args.runs, args.allow_incomplete)
        print("\n".join(f"wrote {p}" for p in written))
        return 0
    if args.command == "completeness":
        from analysis import completeness

        report = completeness.check(load(args.run))
        print(completeness.as_json(report) if args.json else completeness.render(report), end="")
        problems = {c.state for c in report.cells} - {"done"} - ({"failed"} if args.failed_ok else set())
        return 1 if problems else 0
    run_ = load(args.runs, cache=not args.no_cache)
    if args.command == "plot":
        from analysis.plots import plot

        out = args.output or Path("figures") / args.runs[0].name / args.kind
        for path in plot(run_, args.kind, out, args.failures, args.latency):
            print(f"wrote {path}")
        return 0
    if args.command == "table":
        from analysis.results import results_table

        table = results_table(run_, args.rows, args.cols, args.levels, args.metric, args.failures,
                              args.allow_incomplete, args.caption, args.label)  # fmt: skip
    elif args.command == "ablation":
        from analysis.ablation import ablation_table

        table = ablation_table(run_, args.axis, args.baseline, args.levels, args.metric, args.failures,
                               args.resamples, args.permutations, args.seed, args.allow_incomplete, args.caption,
                               args.label)  # fmt: skip
    else:
        from analysis.efficiency import efficiency_table

        table = efficiency_table(run_, args.caption, args.label)
    from analysis.tables import emit, render

    text = render(table, args.format)
    emit(text, args.output)
    return 0


def _runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, nargs="+", help="outputs/<run.name>/ (several: side by side, axis `run`)")
    parser.add_argument("--no-cache", action="store_true", help="read the shards, not the Parquet cache")


def _scoring(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", choices=METRICS, default="official", help="robust: the stricter answer parser")
    parser.add_argument("--failures", choices=POLICIES, default="official",
                        help="official: each benchmark's own rule; wrong or excluded: one rule for all")  # fmt: skip


def _output(parser: argparse.ArgumentParser, incomplete: bool = True) -> None:
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of printing")
    parser.add_argument("--caption", default="")
    parser.add_argument("--label", default="", help="LaTeX label, e.g. tab:main")
    if incomplete:
        parser.add_argument("--allow-incomplete", action="store_true", help="render incomplete cells, marked †")


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]
