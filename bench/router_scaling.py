"""Router scaling: wall time of one `select()` per query against memory size, on the CPU.

Every scoring router (the indexer with random weights: its cost does not depend on them) on N
candidates x 64 tokens x 512 dims of random float32 tokens, N in 100..3600 (30 min of memory at
2 fps), with a 16-token query; median of --repeats runs after one warm-up.
Run: `python bench/router_scaling.py`; writes bench/results/router_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.memory.base import MemoryView
from harness.records import Frame
from harness.routers import ROUTERS
from harness.routers.indexer import LightningIndexer, save_checkpoint

SIZES = (100, 400, 900, 1800, 3600)
ROUTER_NAMES = ("cos_sim_coarse", "cos_sim_fine", "cross_attn", "indexer")


def time_select(router, query: torch.Tensor, view: MemoryView, repeats: int) -> list[float]:
    router.select(query, view, 16)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        router.select(query, view, 16)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/router_scaling.json"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64, help="visual tokens per candidate (P)")
    parser.add_argument("--dim", type=int, default=512, help="token dims (D)")
    parser.add_argument("--query-tokens", type=int, default=16, help="query tokens (S)")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    all_tokens = torch.randn(max(SIZES), args.tokens, args.dim, generator=generator)
    query = torch.randn(args.query_tokens, args.dim, generator=generator)
    pixels = np.zeros((2, 2, 3), np.uint8)
    frames = tuple(Frame(i, i / 2, pixels) for i in range(max(SIZES)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(
            Path(tmp) / "indexer.pt",
            LightningIndexer(args.dim),
            {"encoder": {"name": "random", "identity": "random"}, "dataset": {}, "train": {}},
        )
        routers = {
            name: ROUTERS.build(
                ROUTERS.parse({"name": name, **({"checkpoint": str(checkpoint)} if name == "indexer" else {})})
            )
            for name in ROUTER_NAMES
        }
        shape = f"S={args.query_tokens}, P={args.tokens}, D={args.dim}"
        print(f"median ms per query ({shape}, {torch.get_num_threads()} threads)")
        print(f"{'N':>6} " + " ".join(f"{name:>15}" for name in ROUTER_NAMES))
        for n in SIZES:
            view = MemoryView(now_s=n / 2, frames=frames[:n], tokens=all_tokens[:n])
            cells = []
            for name, router in routers.items():
                times = time_select(router, query, view, args.repeats)
                median_ms = 1000 * statistics.median(times)
                rows.append(
                    {"router": name, "n": n, "median_ms": round(median_ms, 2), "min_ms": round(1000 * min(times), 2)}
                )
                cells.append(f"{median_ms:15.1f}")
            print(f"{n:>6} " + " ".join(cells))
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    setup = {"tokens": args.tokens, "dim": args.dim, "query_tokens": args.query_tokens, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_suffix(".json.tmp")
    temp.write_text(json.dumps({"machine": machine, "setup": setup, "results": rows}, indent=1))
    os.replace(temp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
