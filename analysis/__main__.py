"""python -m analysis <command>: tables from stored results.

python -m analysis score --benchmark ovo_bench --predictions results/Gemini/ [--json]
python -m analysis score --benchmark streambench --run outputs/<run>/<job>/    # LLM-judged: from our records
python -m analysis export --benchmark ovo_bench outputs/<run>/<job>/ -o results/ovo_bench.json
python -m analysis completeness|table|ablation|efficiency|plot|paper outputs/<run>/ ...   # see analysis/cli.py
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from analysis import cli

# benchmark -> module with `score_predictions(path) -> OfficialTable` (official results format in)
SCORERS = {
    "ovo_bench": "harness.benchmarks.ovo_bench_scoring",
    "streamingbench": "harness.benchmarks.streamingbench_scoring",
}
# LLM-judged benchmarks: module with `official_table(records) -> OfficialTable`, read from a job's records (the
# official pipelines keep judgments in their own intermediate files, which we do not parse)
RECORD_SCORERS = {
    "streambench": "harness.benchmarks.streambench",
    "cogstream": "harness.benchmarks.cogstream_scoring",
}
MODEL_KEYED = ("streamingbench",)  # its output files key each response by model name
EXPORTERS = ("ovo_bench", "streamingbench")  # benchmarks whose job records `export` writes in the official format


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="official scores of an official results file or folder")
    score.add_argument("--benchmark", required=True, choices=sorted({*SCORERS, *RECORD_SCORERS}))
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help="a results file or folder, official format")
    source.add_argument("--run", type=Path, help="a job folder: its records, judged ones included")
    score.add_argument("--json", action="store_true", help="one JSON object keyed by task, category and overall")
    score.add_argument("--model", help=f"the model's key in files holding several ({', '.join(MODEL_KEYED)})")
    export = commands.add_parser("export", help="a job folder's records as an official results file")
    export.add_argument("--benchmark", required=True, choices=sorted(EXPORTERS))
    export.add_argument("run_dir", type=Path, help="a job folder (config.yaml and shards/*.jsonl)")
    export.add_argument("-o", "--output", required=True, type=Path, help="the results JSON to write")
    cli.add(commands)
    args = parser.parse_args(argv)
    if args.command in cli.NAMES:
        return cli.run(args)
    if args.command == "export":
        return _export(args)
    if args.model and args.benchmark not in MODEL_KEYED:
        parser.error(f"--model applies to {', '.join(MODEL_KEYED)} only; {args.benchmark} files hold one model")

    try:
        table = _table(args, parser)
    except (OSError, ValueError) as e:
        print(f"analysis score: {e}", file=sys.stderr)
        return 2
    print(json.dumps(table.flat(), indent=1) if args.json else "\n".join(table.lines()))
    for note in table.notes if not args.json else ():
        print(f"note: {note}")
    return 0


def _table(args: argparse.Namespace, parser: argparse.ArgumentParser):  # -> OfficialTable
    """The official table of official predictions, or of a job's records (judged benchmarks)."""
    if args.run is not None:
        if args.benchmark not in RECORD_SCORERS:
            parser.error(f"--run applies to {', '.join(RECORD_SCORERS)}; export {args.benchmark} records first")
        from harness.runner import store

        records = store.read_job(args.run)
        if not records:
            raise ValueError(f"{args.run}: no records (shards/*.jsonl) in this folder; is it a job folder?")
        return importlib.import_module(RECORD_SCORERS[args.benchmark]).official_table(records)
    if args.benchmark not in SCORERS:
        parser.error(f"{args.benchmark} is LLM-judged: score a job's records with --run outputs/<run>/<job>/")
    scorer = importlib.import_module(SCORERS[args.benchmark])
    return scorer.score_predictions(args.predictions, **({"model": args.model} if args.model else {}))


def _export(args: argparse.Namespace) -> int:
    from analysis.export import export

    try:
        export(args.benchmark, args.run_dir, args.output)
    except (OSError, ValueError) as e:  # DataError and ConfigError are ValueErrors
        print(f"analysis export: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output}; score it with: python -m analysis score --benchmark {args.benchmark} "
        f"--predictions {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
