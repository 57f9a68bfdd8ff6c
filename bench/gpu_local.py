"""Local VLM throughput: the hf backend on a full-size Qwen2.5-VL-7B architecture with random weights (bf16, CUDA).

Measures frames/s through the vision tower, prefill tokens/s of the language model, per-query latency of one
stream's sliding window of frames with and without vision-output reuse (frames as images), and queries/s of the
synthetic benchmark through the hf backend: frames as images with reuse, without it, and as a video. Answers are
noise (random weights), the arithmetic is the real model's. Nothing is downloaded: the published config values
are below; the tokenizer is the tests' small BPE (generated ids beyond it decode to nothing). The checkpoint
folder (16 GB) is written once under --workdir and reused.
Run from the repository root: `python -m bench.gpu_local` (writes bench/results/gpu_local.json), or
`python -m bench.gpu_local --tiny` on the CPU with the tests' tiny Qwen2.5-VL (bench/results/gpu_local_tiny.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from backends import hf
from harness.benchmarks.base import DATASETS
from harness.config import load_job, register
from harness.records import Frame, Request
from harness.runner import store
from harness.runner.job import run_job
from harness.video import sample_frames

CONF = Path(__file__).resolve().parents[1] / "conf"

# Qwen/Qwen2.5-VL-7B-Instruct config.json (text model: Qwen2.5-7B; vision: a 32-block window-attention ViT)
QWEN2_5_VL_7B_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    hidden_act="silu",
    tie_word_embeddings=False,
)
QWEN2_5_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=3584,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)

# what each scale runs: the checkpoint's numbers, the frames, the job's size
SCALES = {
    "full": dict(
        dtype="bfloat16",
        device="cuda",
        max_side=448,  # 448 x 336 frames: 192 tokens each as images
        vision_batch=32,
        prefill_tokens=[2048, 8192],
        window=32,  # frames per query in the stream measurement (one S2 request)
        stream_queries=16,
        duration_s=60,
        min_pixels=3136,  # frames are never enlarged
        max_pixels=200704,  # 448 x 448: 256 tokens
        job=["system.max_side=448", "system.s1.max_frames=8", "system.s2.max_frames=32"],
    ),
    "tiny": dict(
        dtype="float32",
        device="cpu",
        max_side=112,  # 112 x 84 frames: 12 tokens each as images
        vision_batch=8,
        prefill_tokens=[256],
        window=8,
        stream_queries=6,
        duration_s=20,
        min_pixels=784,
        max_pixels=12544,
        job=["system.max_side=112", "system.s1.max_frames=2", "system.s2.max_frames=4", "system.proactive.poll_s=4"],
    ),
}
MODES = {  # the job runs, by name: frames_as and vision_cache_frames
    "images, reuse": ["backend.frames_as=images", "backend.vision_cache_frames=256"],
    "images, no reuse": ["backend.frames_as=images", "backend.vision_cache_frames=0"],
    "video": ["backend.frames_as=video"],
}


def checkpoint(tiny: bool, workdir: Path, device: str) -> Path:
    """The checkpoint folder: the tests' tiny Qwen2.5-VL, or the full-size architecture with random bf16 weights."""
    if tiny:
        from tests.fixtures.tiny_models import build_tiny_qwen25vl

        folder = workdir / "tiny-qwen2_5_vl"
        return folder if (folder / "config.json").is_file() else build_tiny_qwen25vl(folder)
    folder = workdir / "qwen2_5_vl_7b-random"
    if (folder / "config.json").is_file():
        return folder
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from tests.fixtures.tiny_models import qwen_token_ids, write_qwen_processor

    partial = workdir / "qwen2_5_vl_7b-partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = write_qwen_processor(partial, Qwen2_5_VLProcessor)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = dict(QWEN2_5_VL_7B_TEXT, bos_token_id=0, eos_token_id=eos, pad_token_id=0)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN2_5_VL_7B_VISION, **qwen_token_ids(tokenizer))
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, where the CPU takes minutes
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(partial)
    GenerationConfig(eos_token_id=[eos, 0], pad_token_id=0, do_sample=False).save_pretrained(partial)
    del model
    torch.cuda.empty_cache()
    partial.rename(folder)  # complete folders only: an interrupted build is redone
    return folder


def vision_tower(backend: hf.HF, scale: dict[str, Any], frames: list[np.ndarray], reps: int) -> dict[str, float]:
    """Frames/s of one batched vision-tower forward (the image processor outside the timing)."""
    model = backend.model
    size = {"shortest_edge": scale["min_pixels"], "longest_edge": scale["max_pixels"]}
    processed = backend.processor.image_processor(images=frames, return_tensors="pt", size=size)
    pixels = processed["pixel_values"].to(model.device, model.dtype)
    grid = processed["image_grid_thw"].to(model.device)
    with torch.inference_mode():
        model.model.visual(pixels, grid_thw=grid)  # warm-up
        seconds = _timed(lambda: model.model.visual(pixels, grid_thw=grid), reps, model.device)
    tokens = int(grid.prod(-1).sum()) // 4
    return {
        "frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "tokens_per_frame": tokens // len(frames),
        "s_per_batch": round(seconds, 4),
        "frames_per_s": round(len(frames) / seconds, 1),
    }


def prefill(backend: hf.HF, lengths: list[int], reps: int) -> dict[str, dict[str, float]]:
    """Tokens/s of the language model's prefill (text only, no cache, the last position's logits)."""
    model = backend.model
    out = {}
    with torch.inference_mode():
        for length in lengths:
            ids = torch.randint(20, 1000, (1, length), device=model.device)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
            seconds = _timed(lambda i=ids: model(input_ids=i, use_cache=False, logits_to_keep=1), reps, model.device)
            out[str(length)] = {"s": round(seconds, 4), "tokens_per_s": round(length / seconds, 1)}
    return out


def stream(folder: Path, scale: dict[str, Any], frames: list[np.ndarray], extra: dict[str, Any]) -> dict[str, Any]:
    """One stream's S2 queries, each a window of frames one frame later than the one before: with vs without reuse."""
    timed = [Frame(i, float(i), pixels) for i, pixels in enumerate(frames)]
    window, n = scale["window"], scale["stream_queries"]
    requests = [
        Request(float(k + window - 1), "S2", tuple(timed[k : k + window]), "What changed?", max_new_tokens=8)
        for k in range(min(n, len(timed) - window + 1))
    ]
    out: dict[str, Any] = {}
    answers = {}
    for name, cache in (("reuse", 256), ("no reuse", 0)):
        backend = _backend(folder, scale, frames_as="images", vision_cache_frames=cache, **extra)
        kept = backend.vision_cache
        asyncio.run(_generate(backend, requests[:1]))  # the first query encodes every frame of its window
        started = time.perf_counter()
        responses = asyncio.run(_generate(backend, requests[1:], close=True))
        wall = time.perf_counter() - started
        answers[name] = [r.text for r in responses]
        out[name] = {
            "queries": len(responses),
            "s_per_query": round(wall / len(responses), 4),
            "ttft_s": round(statistics.fmean(r.ttft_s for r in responses if r.ttft_s is not None), 4),
            "visual_tokens": responses[0].visual_tokens,
            "frames_encoded": None if kept is None else kept.encoded,  # the first query's window included
        }
    out["speedup"] = round(out["no reuse"]["s_per_query"] / out["reuse"]["s_per_query"], 2)
    out["same_answers"] = sum(a == b for a, b in zip(answers["reuse"], answers["no reuse"], strict=True))
    return out


def jobs(folder: Path, scale: dict[str, Any], data_root: Path, videos: int, extra: list[str]) -> dict[str, Any]:
    """Queries/s of the synthetic benchmark through the hf backend, per mode; answers compared across modes."""
    rows: dict[str, Any] = {}
    responses: dict[str, dict[str, str | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode in MODES.items():
            overrides = [
                "backend=hf",
                f"backend.model_path={folder}",
                f"backend.dtype={scale['dtype']}",
                f"backend.device_map={scale['device']}",
                f"dataset.root={data_root}",
                f"dataset.videos={videos}",
                f"dataset.duration_s={scale['duration_s']}",
                f"backend.min_pixels={scale['min_pixels']}",
                f"backend.max_pixels={scale['max_pixels']}",
                "system.fps=1",
                "system.s1.max_new_tokens=8",
                "system.s2.max_new_tokens=16",
                "run.progress=false",
                "run.torch_threads=null",  # the image processor runs on the CPU: all its threads
                *scale["job"],
                *mode,
                *extra,
            ]
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("config", overrides=overrides)
            job, run, shard = load_job(cfg)
            DATASETS.build(job.dataset).load()  # generated outside the timing
            out_dir = Path(tmp) / name.replace(", ", "-").replace(" ", "_")
            started = time.perf_counter()
            result = run_job(job, run, shard, out_dir)
            wall = time.perf_counter() - started
            records = store.read_job(out_dir)
            responses[name] = {r.query_id: r.response for r in records}
            calls = [r for r in records if r.error is None and r.n_calls == 1]
            rows[name] = {
                "queries": result.new,
                "model_calls": result.model_calls,
                "errors": sum(r.error is not None for r in records),
                "wall_s": round(wall, 2),
                "queries_per_s": round(result.new / wall, 3),
                "calls_per_s": round(result.model_calls / wall, 3),
                "latency_s": _mean([r.latency_s for r in calls]),  # calls of one query each
                "ttft_s": _mean([r.ttft_s for r in calls if r.ttft_s is not None]),
                "visual_tokens_per_call": _mean([r.visual_tokens for r in calls]),
            }
    same = responses["images, reuse"].items() & responses["images, no reuse"].items()
    rows["reuse_same_answers"] = f"{len(same)} of {len(responses['images, reuse'])}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny Qwen2.5-VL on the CPU (smoke test)")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-gpu-local"), help="checkpoint and data")
    parser.add_argument("--videos", type=int, default=3, help="synthetic videos in each job")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the vision and prefill forwards")
    parser.add_argument("--attn", default="sdpa", help="backend.attn_implementation (flash_attention_2 if installed)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scale = SCALES["tiny" if args.tiny else "full"]
    if scale["device"] == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --tiny for the CPU smoke test")
    out = args.out or Path(f"bench/results/gpu_local{'_tiny' if args.tiny else ''}.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register()
    args.workdir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    folder = checkpoint(args.tiny, args.workdir, scale["device"])
    built_s = time.perf_counter() - started
    data_root = args.workdir / "data"
    data = [f"dataset.root={data_root}", f"dataset.videos={args.videos}", f"dataset.duration_s={scale['duration_s']}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=data)
    sample = DATASETS.build(load_job(cfg)[0].dataset).load()[0]
    frames = [f.pixels for f in sample_frames(sample.video, 1.0, scale["max_side"])]
    extra = {"attn_implementation": args.attn}

    # held open to the end: every later backend on this checkpoint (the jobs' too) shares its loaded weights
    anchor = _backend(folder, scale, frames_as="images", vision_cache_frames=0, **extra)
    results: dict[str, Any] = {
        "vision_tower": vision_tower(anchor, scale, frames[: scale["vision_batch"]], args.reps),
        "prefill": prefill(anchor, scale["prefill_tokens"], args.reps),
    }
    print(json.dumps(results, indent=1))
    results["stream"] = stream(folder, scale, frames, extra)
    print(json.dumps({"stream": results["stream"]}, indent=1))
    results["jobs"] = jobs(folder, scale, data_root, args.videos, [f"backend.attn_implementation={args.attn}"])
    print(json.dumps({"jobs": results["jobs"]}, indent=1))
    loads = hf.MODELS.loads
    asyncio.run(anchor.aclose())

    import transformers

    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if scale["device"] == "cuda" else None,
    }
    setup = {
        "model": "tiny Qwen2.5-VL (tests)" if args.tiny else "Qwen2.5-VL-7B architecture, random weights",
        "dtype": scale["dtype"],
        "device": scale["device"],
        "attn_implementation": args.attn,
        "checkpoint_build_s": round(built_s, 1),
        "model_loads": loads,  # 1: every backend above shared one loaded model
        "videos": args.videos,
        "duration_s": scale["duration_s"],
        "pixels": [scale["min_pixels"], scale["max_pixels"]],
        "job_overrides": scale["job"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "setup": setup, "results": results}, indent=1))
    print(f"written to {out}")


def _backend(folder: Path, scale: dict[str, Any], **fields: Any) -> hf.HF:
    config = hf.HFConfig(
        model_path=str(folder),
        dtype=hf.Dtype(scale["dtype"]),
        device_map=scale["device"],
        attn_implementation=hf.Attention(fields.pop("attn_implementation", "sdpa")),
        frames_as=hf.FramesAs(fields.pop("frames_as")),
        min_pixels=scale["min_pixels"],
        max_pixels=scale["max_pixels"],
        **fields,
    )
    return hf.HF(config)


async def _generate(backend: hf.HF, requests: list[Request], close: bool = False) -> list[Any]:
    try:
        return [await backend.generate(r) for r in requests]
    finally:
        if close:
            await backend.aclose()


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _timed(step: Any, reps: int, device: torch.device) -> float:
    """Mean seconds of `step` over reps calls, the device synchronised around them."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / reps


if __name__ == "__main__":
    main()
