"""The hf backend on tiny random Qwen2-VL / Qwen2.5-VL checkpoints loaded through the real from_pretrained:
synthetic jobs end to end (answers are noise; records, token counts, frames and determinism are not), one load
shared by S1 and S2, vision-output reuse identical to the plain path, and the failures a sweep must survive."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backends import hf
from backends.base import BACKENDS
from backends.openai_chat import OpenAIConfig, chat_messages
from harness.errors import BackendError, ConfigError
from harness.records import Frame, Request, Turn
from harness.runner import job as job_module
from harness.runner import store
from harness.runner.job import run_job
from tests.helpers import CONF, compose_job

# small and fast: 1 fps, 112 px frames of 12 tokens (3 x 4 patches of 28 px) as images, 12 per 2 frames as a video
SMALL = [
    "backend=hf",
    "backend.dtype=float32",
    "backend.device_map=cpu",
    "backend.min_pixels=784",
    "backend.max_pixels=12544",
    "system.fps=1",
    "system.max_side=112",
    "system.s1.max_frames=2",
    "system.s2.max_frames=4",
    "system.s1.max_new_tokens=8",
    "system.s2.max_new_tokens=8",
    "system.proactive.poll_s=4",
    "run.concurrency=2",
]
TOKENS_PER_FRAME = 12
MAX_FRAMES = {"S1": 2, "S2": 4}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _job(data_root: Path, model: Path, out_dir: Path, *overrides: str):
    job, run, shard = compose_job(data_root, *SMALL, f"backend.model_path={model}", *overrides)
    run_job(job, run, shard, out_dir)
    return store.read_job(out_dir)


def _backend(model: Path, **overrides) -> hf.HF:
    node = {"name": "hf", "model_path": str(model), "dtype": "float32", "device_map": "cpu", **overrides}
    return BACKENDS.build(BACKENDS.parse(node))


def _frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(i, float(i), rng.integers(0, 256, (84, 112, 3), dtype=np.uint8)) for i in range(n)]


def _request(frames: list[Frame], **fields) -> Request:
    return Request(frames[-1].time_s, "S2", tuple(frames), "What is on screen?", max_new_tokens=12, **fields)


def _answers(backend: hf.HF, *requests: Request):
    async def run():
        try:
            return [await backend.generate(r) for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(run())


async def _close(*backends: hf.HF) -> None:
    for backend in backends:
        await backend.aclose()


def _visual_tokens_per_call(n_frames: int, frames_as: str) -> int:
    return TOKENS_PER_FRAME * (n_frames if frames_as == "images" else math.ceil(n_frames / 2))


def test_a_synthetic_job_end_to_end_with_frames_as_a_video_is_deterministic(tiny_qwen25vl, data_root, tmp_path):
    records = _job(data_root, tiny_qwen25vl, tmp_path / "first", "backend.frames_as=video")

    assert records and all(r.error is None for r in records)
    routes = Counter(r.route for r in records)
    assert routes["S1"] and routes["S2"]
    for r in records:
        assert r.tokens_out > 0 and 0 < r.ttft_s <= r.latency_s
        assert len(r.frame_times_s) <= MAX_FRAMES[r.route]
        if r.frame_times_s:
            assert r.tokens_in > r.visual_tokens > 0
        if r.n_calls == 1 and r.frame_times_s:  # one call: its visual tokens are its frames'
            assert r.visual_tokens == _visual_tokens_per_call(len(r.frame_times_s), "video")
    again = _job(data_root, tiny_qwen25vl, tmp_path / "second", "backend.frames_as=video")
    assert [(r.query_id, r.response, r.tokens_in, r.tokens_out) for r in again] == [
        (r.query_id, r.response, r.tokens_in, r.tokens_out) for r in records
    ]


def test_s1_and_s2_on_two_configs_of_one_model_load_it_once_and_images_mode_reuse_changes_no_answer(
    tiny_qwen25vl, data_root, tmp_path
):
    s1_video = [  # S1's own config, frames as a video; S2 takes frames as images: two backends, one set of weights
        "backend@system.s1.backend=hf",
        f"system.s1.backend.model_path={tiny_qwen25vl}",
        "system.s1.backend.dtype=float32",
        "system.s1.backend.device_map=cpu",
        "system.s1.backend.min_pixels=784",
        "system.s1.backend.max_pixels=12544",
        "system.s1.backend.frames_as=video",
    ]
    job, _, _ = compose_job(data_root, *SMALL, f"backend.model_path={tiny_qwen25vl}", *s1_video)
    routes = job_module._backends(job)
    assert routes["S1"] is not routes["S2"] and routes["S1"].model is routes["S2"].model
    asyncio.run(_close(*routes.values()))

    before = hf.MODELS.loads
    reused = _job(data_root, tiny_qwen25vl, tmp_path / "reuse", "backend.frames_as=images", *s1_video)
    assert hf.MODELS.loads == before + 1
    assert all(r.error is None for r in reused)
    frames_as = {"S1": "video", "S2": "images"}
    assert {r.route for r in reused if r.n_calls == 1 and r.frame_times_s} == {"S1", "S2"}
    for r in reused:
        if r.n_calls == 1 and r.frame_times_s:  # one call: its visual tokens are its frames', as its route takes them
            assert r.visual_tokens == _visual_tokens_per_call(len(r.frame_times_s), frames_as[r.route])

    plain = _job(
        data_root,
        tiny_qwen25vl,
        tmp_path / "plain",
        "backend.frames_as=images",
        "backend.vision_cache_frames=0",
        *s1_video,
    )
    assert [(r.query_id, r.response, r.tokens_in, r.visual_tokens) for r in plain] == [
        (r.query_id, r.response, r.tokens_in, r.visual_tokens) for r in reused
    ]


@pytest.mark.parametrize("model", ["tiny_qwen25vl", "tiny_qwen2vl"])
@pytest.mark.parametrize("capacity", [64, 3])  # 3: fewer frames kept than one request shows
def test_reused_vision_outputs_give_identical_answers_and_only_new_frames_are_encoded(request, model, capacity):
    folder = request.getfixturevalue(model)
    frames = _frames(6)
    history = (Turn("What was first?", "A red circle."),)
    requests = [
        _request(frames[:4], context=("[0.5 s] A note.",), history=history, system="Be brief."),
        _request(frames[2:6]),  # 2 frames seen, 2 new
        _request(frames[2:6]),  # all seen
    ]
    plain = _answers(_backend(folder, frames_as="images", vision_cache_frames=0), *requests)
    backend = _backend(folder, frames_as="images", vision_cache_frames=capacity)
    cache = backend.vision_cache
    reused = _answers(backend, *requests)

    assert [r.text for r in reused] == [r.text for r in plain]
    assert [(r.tokens_in, r.tokens_out, r.visual_tokens) for r in reused] == [
        (r.tokens_in, r.tokens_out, r.visual_tokens) for r in plain
    ]
    assert all(r.visual_tokens == 4 * TOKENS_PER_FRAME for r in plain)  # 84 x 112 frames: 3 x 4 tokens each
    if capacity == 64:
        assert (cache.encoded, cache.reused, cache.calls) == (6, 6, 2)  # 4, then 2 new, then none
    else:
        assert len(cache) == 3 and cache.encoded > 6  # evicted frames are encoded again, answers unchanged


def test_qwen2vl_takes_frames_as_a_video_or_as_images(tiny_qwen2vl):
    frames = _frames(4)
    video, images = (
        _answers(_backend(tiny_qwen2vl, frames_as=mode, min_pixels=784, max_pixels=12544), _request(frames))[0]
        for mode in ("video", "images")
    )
    assert video.visual_tokens == 2 * TOKENS_PER_FRAME  # 4 frames, 2 per temporal patch
    assert images.visual_tokens == 4 * TOKENS_PER_FRAME
    assert video.tokens_out == images.tokens_out == 12 and video.finish_reason == "length"


def test_the_user_turn_has_the_openai_backends_parts_and_labels():
    frames = _frames(3)
    request = _request(frames, context=("[0.5 s] A red circle.",), history=(Turn("Q1", "A1"),), system="S")
    ours = hf.chat_messages(request, hf.FramesAs.images)
    theirs = chat_messages(request, OpenAIConfig(model="m"))

    def texts(content):
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        return [p.get("text", "<frames>") for p in parts]

    assert [m["role"] for m in ours] == [m["role"] for m in theirs]
    assert [texts(m["content"]) for m in ours] == [texts(m["content"]) for m in theirs]
    [video_turn] = [m for m in hf.chat_messages(request, hf.FramesAs.video) if m["role"] == "user"][-1:]
    assert texts(video_turn["content"]) == ["[0.5 s] A red circle.", "[0.0 s to 2.0 s]", "<frames>", request.prompt]


def test_a_prompt_over_the_context_is_an_error_record_and_the_next_query_goes_on(tiny_qwen25vl, data_root, tmp_path):
    short = tmp_path / "short-context"
    shutil.copytree(tiny_qwen25vl, short)
    config = json.loads((short / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 200  # S1's 1 frame fits, S2's 8 do not
    (short / "config.json").write_text(json.dumps(config))
    records = _job(
        data_root,
        short,
        tmp_path / "job",
        "backend.frames_as=images",
        "system.s1.max_frames=1",
        "system.s2.max_frames=8",
    )
    failed = [r for r in records if r.error is not None]
    assert failed and len(failed) < len(records)
    for r in failed:
        assert "exceeds the model's context of 200" in r.error and "system.s2.max_frames" in r.error


def test_cuda_out_of_memory_is_a_backend_error_with_the_fix_and_the_next_call_runs(tiny_qwen25vl, monkeypatch):
    backend = _backend(tiny_qwen25vl)
    generate = backend.model.generate
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return generate(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", out_of_memory_once)

    async def run():
        try:
            with pytest.raises(BackendError, match=r"CUDA out of memory\. Tried .* Lower system\.s2\.max_frames"):
                await backend.generate(_request(_frames(2)))
            return await backend.generate(_request(_frames(2)))
        finally:
            await backend.aclose()

    assert asyncio.run(run()).tokens_out == 12


def test_a_wrong_model_path_or_model_type_fails_before_any_work(tiny_clip, data_root, tmp_path):
    for case, (model_path, message) in enumerate(
        [
            ("", "backend.model_path is not set"),
            (tmp_path / "missing", "no config.json there"),
            (tiny_clip, "holds a 'clip' model"),
        ]
    ):
        job, run, shard = compose_job(data_root, *SMALL, f"backend.model_path={model_path}")
        with pytest.raises(ConfigError, match=message):
            run_job(job, run, shard, tmp_path / f"job{case}")
        assert store.read_job(tmp_path / f"job{case}") == []


def test_every_ready_config_composes_as_hf_and_names_its_local_folder(data_root):
    presets = sorted(p.stem for p in (CONF / "backend" / "hf").glob("*.yaml"))
    assert presets
    for preset in presets:
        job, _, _ = compose_job(data_root, f"backend=hf/{preset}")
        assert job.backend.name == "hf" and job.backend.config.model_path.startswith("models/")
        with pytest.raises(ConfigError, match="backend.model_path=models/"):
            BACKENDS.build(job.backend)


def _greedy_by_hand(backend: hf.HF, request: Request) -> tuple[list[int], list[float]]:
    """The tokens greedy decoding picks for a text-only request, and their log-probabilities, one forward per token
    over the whole sequence (no cache): what the backend's confidence must agree with."""
    processor, model = backend.processor, backend.model
    text = processor.apply_chat_template(hf.chat_messages(request, backend.frames_as), tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = processor(text=[text], return_tensors="pt")["input_ids"]
    tokens, logprobs = [], []
    with torch.inference_mode():
        for _ in range(request.max_new_tokens):
            step = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
            token = int(step.argmax())
            tokens.append(token)
            logprobs.append(float(step[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logprobs


def test_confidence_is_the_mean_token_probability_and_asking_for_it_changes_no_answer(tiny_qwen25vl):
    backend = _backend(tiny_qwen25vl, frames_as="images", min_pixels=784, max_pixels=12544)
    assert hf.HF.gives_confidence
    text_only = Request(5.0, "S1", (), "What is on screen?", max_new_tokens=12)
    tokens, logprobs = _greedy_by_hand(backend, text_only)
    with_frames = _request(_frames(3))
    plain, asked, plain_frames, asked_frames = _answers(
        backend,
        text_only,
        replace(text_only, want_confidence=True),
        with_frames,
        replace(with_frames, want_confidence=True),
    )

    assert plain.confidence is None and plain_frames.confidence is None
    for without, with_ in ((plain, asked), (plain_frames, asked_frames)):
        assert (with_.text, with_.tokens_in, with_.tokens_out, with_.visual_tokens) == (
            without.text,
            without.tokens_in,
            without.tokens_out,
            without.visual_tokens,
        )
        assert 0 < with_.confidence <= 1
    assert asked.text == backend.processor.tokenizer.decode(tokens, skip_special_tokens=True)
    assert asked.confidence == pytest.approx(math.exp(sum(logprobs) / len(logprobs)), rel=1e-4)


def test_confidence_stops_at_the_end_token(tiny_qwen25vl, tmp_path):
    """The checkpoint's end token set to the greedy reply's k-th token: generation stops there, and the confidence
    covers the k tokens before it only."""
    probe = _backend(tiny_qwen25vl)
    request = Request(5.0, "S1", (), "What is on screen?", max_new_tokens=12, want_confidence=True)
    tokens, logprobs = _greedy_by_hand(probe, request)
    asyncio.run(_close(probe))
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])  # its first appearance
    stopping = tmp_path / "stops"
    shutil.copytree(tiny_qwen25vl, stopping)
    generation = json.loads((stopping / "generation_config.json").read_text())
    generation["eos_token_id"] = [tokens[k]]
    (stopping / "generation_config.json").write_text(json.dumps(generation))

    [reply] = _answers(_backend(stopping), request)
    assert (reply.tokens_out, reply.finish_reason) == (k + 1, "stop")
    assert reply.confidence == pytest.approx(math.exp(sum(logprobs[:k]) / k), rel=1e-4)
