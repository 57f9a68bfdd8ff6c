"""Benchmark adapters; importing this package registers them all."""

from harness.benchmarks import (
    cogstream,  # noqa: F401
    dualstream,  # noqa: F401
    ovo_bench,  # noqa: F401
    streambench,  # noqa: F401
    streamingbench,  # noqa: F401
    synthetic,  # noqa: F401
)
from harness.benchmarks.base import DATASETS, Benchmark

__all__ = ["DATASETS", "Benchmark"]
