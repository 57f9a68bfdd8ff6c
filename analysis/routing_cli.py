"""`python -m analysis routing ...`: replay S1/S2 policies on a run's recorded answers, without asking a model.

python -m analysis routing simulate outputs/<run> --policy rule --policy oracle --policy threshold:confidence
    [--with outputs/<run>-rerun] [--model checkpoints/scheduler-classifier.json] [--plot figures/routing]
python -m analysis routing misroutes outputs/<run> [--policy recorded] [--examples 3]
python -m analysis routing rerun outputs/<run> --policy oracle      # query-id files and the commands to run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis.aggregate import POLICIES
from analysis.tables import FORMATS

LEVELS = ("tasks", "categories", "overall")


def add(commands: Any) -> None:
    """Add `routing` and its subcommands to the parser's subparsers."""
    routing = commands.add_parser("routing", help="replay S1/S2 policies offline on a run's recorded answers")
    actions = routing.add_subparsers(dest="routing", required=True)
    policy = "force_s1|force_s2|rule|semantic|classifier|oracle|recorded|threshold:SCORE[@θ]|FILE.yaml"

    simulate = actions.add_parser("simulate", help="accuracy, S2 share, latency and cost per policy")
    _common(simulate)
    simulate.add_argument("--policy", action="append", required=True, metavar="POLICY",
                          help=f"{policy}; repeat for more rows (SCORE: confidence, semantic, classifier)")  # fmt: skip
    simulate.add_argument("--latency", choices=("measured", "modelled"), default="measured")
    simulate.add_argument("--failures", choices=POLICIES, default="official")
    simulate.add_argument("--levels", type=_keys, default=list(LEVELS), help="tasks,categories,overall")
    simulate.add_argument("--plot", type=Path, metavar="PATH", help="also write PATH.png and PATH.pdf")
    simulate.add_argument("--x", choices=("s2", "cost"), default="s2", help="the plot's x axis")
    _output(simulate)

    misroutes = actions.add_parser("misroutes", help="per task family, queries sent to the route that scored lower")
    _common(misroutes)
    misroutes.add_argument("--policy", default="recorded", help=f"{policy} (default: the route each record took)")
    misroutes.add_argument("--examples", type=int, default=3, help="examples per task family and direction")
    _output(misroutes)

    rerun = actions.add_parser("rerun", help="the queries a policy needs on a route that never answered them")
    _common(rerun)
    rerun.add_argument("--policy", action="append", required=True, metavar="POLICY", help=policy)


def run(args: argparse.Namespace) -> int:
    from analysis import routing_reports as reports
    from analysis.routing import load_answers
    from analysis.routing_policies import parse_policy, simulate
    from analysis.tables import emit, render

    answers = load_answers(args.run, args.with_)
    if args.routing == "rerun":
        for text in args.policy:
            print("\n".join(reports.rerun(answers, parse_policy(text), args.model)))
        return 0
    if args.routing == "simulate":
        policies = [parse_policy(text) for text in args.policy]
        results = [reports.Simulated(a, p, simulate(p, a, args.model, args.latency, args.failures))
                   for a in answers for p in policies]  # fmt: skip
        text = render(reports.simulate_table(results, args.levels, args.latency, args.caption, args.label), args.format)
        if args.plot:
            print("\n".join(f"wrote {p}" for p in reports.plot(results, args.x, args.plot)))
    else:
        table, examples = reports.misroutes_table(
            answers, parse_policy(args.policy), args.model, args.examples, args.caption, args.label
        )
        text = render(table, args.format)
        if args.format == "md" and examples:
            text += "\nExamples:\n" + "\n".join(examples) + "\n"
    emit(text, args.output)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="outputs/<run.name>/ or one job folder in it")
    parser.add_argument("--with", dest="with_", type=Path, action="append", default=[], metavar="DIR",
                        help="a run whose answers fill the routes this one lacks (e.g. a `routing rerun`)")  # fmt: skip
    parser.add_argument("--model", type=Path, help="classifier: the model file (python -m harness.train_scheduler)")


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("-o", "--output", type=Path, help="write the table here instead of printing it")
    parser.add_argument("--caption", default="")
    parser.add_argument("--label", default="", help="LaTeX label, e.g. tab:routing")


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]
