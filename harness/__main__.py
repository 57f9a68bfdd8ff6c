"""python -m harness <command>: the harness's own commands (sweeps themselves run with run_sweep.py).

python -m harness status outputs/<run>        # done / running / stale / failed / missing per cell and shard, and
                                              # the command that finishes the sweep; exit 1 while anything is not done
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="where a sweep stands, and the command that finishes it")
    status.add_argument("run", type=Path, help="the sweep folder, outputs/<run.name>/")
    status.add_argument(
        "--stale-after", type=float, metavar="SECONDS", help="a running job with an older heartbeat is stale"
    )
    status.add_argument("--json", action="store_true", help="the report as JSON")
    args = parser.parse_args(argv)

    from harness import status as status_
    from harness.errors import DataError

    try:
        report = status_.check(args.run, args.stale_after)
    except DataError as e:
        print(f"harness status: {e}", file=sys.stderr)
        return 2
    print(status_.as_json(report) if args.json else status_.render(report, args.stale_after), end="")
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
