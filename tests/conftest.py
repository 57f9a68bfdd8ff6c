"""Shared fixtures: videos generated with PyAV, nothing downloaded."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# tiny random CLIP / SigLIP / Qwen2.5-VL checkpoints built offline once per session; local servers that speak the
# OpenAI, Anthropic and Gemini APIs
pytest_plugins = [
    "tests.fixtures.tiny_models",
    "tests.fixtures.openai_server",
    "tests.fixtures.anthropic_server",
    "tests.fixtures.google_server",
]

NO_VLLM = "vllm is not installed in this venv: run `make test-vllm`"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `vllm` are skipped, with the reason, where vllm cannot be imported (the main venv)."""
    if importlib.util.find_spec("vllm") is not None:
        return
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=NO_VLLM))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_VLLM in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {NO_VLLM}", yellow=True)


BITS = 12
CELL = 16


def write_barcode_video(path: Path, n_frames: int, rate: Fraction, size: tuple[int, int] = (192, 64)) -> Path:
    """Each frame shows its own index as a 12-bit black/white barcode."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "preset": "veryfast", "g": "10"}
        for index in range(n_frames):
            pixels = np.full((height, width, 3), 40, np.uint8)
            for bit in range(BITS):
                if index >> bit & 1:
                    pixels[:, bit * CELL : (bit + 1) * CELL] = 230
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_barcode(pixels: np.ndarray) -> int:
    row = pixels[pixels.shape[0] // 2]
    return sum(1 << bit for bit in range(BITS) if row[bit * CELL + CELL // 2].mean() > 128)


@pytest.fixture(scope="session")
def barcode_video_10fps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s at exactly 10 fps: frame k is on screen during [k/10, (k+1)/10)."""
    return write_barcode_video(tmp_path_factory.mktemp("video") / "barcode10.mp4", 80, Fraction(10))


@pytest.fixture(scope="session")
def barcode_video_ntsc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s at 30000/1001 fps, where rounding to the nearest frame and flooring differ."""
    return write_barcode_video(tmp_path_factory.mktemp("video") / "barcode_ntsc.mp4", 180, Fraction(30000, 1001))
