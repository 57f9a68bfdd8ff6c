"""Encoders: fixed token shapes, one space for frames and text, identities that follow the weights, and
patch_color's per-patch tokens finding the small object that a mean-pooled frame vector dilutes."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.benchmarks.synthetic_video import COLOURS, shape_outline
from harness.encoders import ENCODERS
from harness.encoders.backend_vision import BackendVision, BackendVisionConfig
from harness.encoders.checkpoint import Dtype
from harness.encoders.clip import Clip, ClipConfig, _pooling_head_per_token
from harness.encoders.patch_color import AXES, PatchColor, PatchColorConfig
from harness.errors import ConfigError
from tests.helpers import CONF

# ---- patch_color


def test_patch_color_token_count_is_fixed_whatever_the_frame_size():
    encoder = PatchColor(PatchColorConfig(grid_rows=6, grid_cols=8))
    for height, width in [(240, 320), (480, 640), (61, 97)]:
        tokens = encoder.encode_frames([_background(height, width), _background(height, width)])
        assert tokens.shape == (2, 48, len(AXES)) and tokens.dtype == torch.float32
    assert encoder.encode_frames([]).shape == (0, 48, len(AXES))


def test_patch_color_describes_the_patch_an_object_sits_in():
    frame = _background()
    _draw(frame, "circle", "blue", cx=140, cy=60, size=30)  # cell row 1, col 3 of a 6 x 8 grid of 40 px cells
    tokens = PatchColor(PatchColorConfig()).encode_frames([frame])[0]
    coloured = torch.nonzero(tokens[:, AXES.index("nothing")] == 0).flatten().tolist()
    assert coloured == [1 * 8 + 3]
    assert dict(zip(AXES, tokens[11].tolist(), strict=True)) == {
        **dict.fromkeys(AXES, 0.0),
        "blue": 1.0,
        "circle": 1.0,
    }
    assert torch.equal(tokens[0], _axis("nothing"))  # a patch of textured background only


def test_patch_color_ignores_grey_shapes_and_background_texture():
    frame = _background()
    _draw(frame, "star", "grey", cx=160, cy=120, size=60)
    tokens = PatchColor(PatchColorConfig()).encode_frames([frame])[0]
    assert torch.equal(tokens, _axis("nothing").expand(48, -1))


def test_patch_color_text_gets_one_token_per_colour_or_shape_word():
    encoder = PatchColor(PatchColorConfig())
    tokens = encoder.encode_text("Is a Red circle next to the blue SQUARES? Red, I said.")
    assert tokens.shape == (4, len(AXES))
    assert [AXES[i] for i in tokens.argmax(dim=1).tolist()] == ["red", "circle", "blue", "square"]
    assert torch.equal(tokens.sum(dim=1), torch.ones(4))
    assert [AXES[i] for i in encoder.encode_text("How many coloured stars have appeared so far?").argmax(1)] == ["star"]
    assert torch.equal(encoder.encode_text("What happened just now?"), _axis("nothing")[None])


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "h264"])
def test_fine_similarity_finds_the_small_red_star_that_mean_pooling_dilutes(compressed):
    scenes = [  # (shape, colour, cx, cy, size) per object; frame 1 is the only one with a red star
        [("square", "blue", 70, 70, 90), ("circle", "green", 240, 160, 90), ("triangle", "grey", 250, 50, 50)],
        [("square", "blue", 70, 70, 90), ("circle", "green", 240, 160, 90), ("star", "red", 150, 200, 26)],
        [("circle", "red", 160, 120, 110)],
        [("star", "yellow", 160, 120, 110), ("square", "grey", 40, 200, 40)],
        [],
    ]
    frames = []
    for scene in scenes:
        frame = _background()
        for shape, colour, cx, cy, size in scene:
            _draw(frame, shape, colour, cx, cy, size)
        frames.append(frame)
    if compressed:
        frames = _through_h264(frames)
    encoder = PatchColor(PatchColorConfig())
    query = encoder.encode_text("Where did the small red star appear?")
    tokens = encoder.encode_frames(frames)

    fine, coarse = _cos_sim_fine(query, tokens), _cos_sim_coarse(query, tokens)
    assert int(fine.argmax()) == 1
    assert fine[1] > fine[2] + 0.2 and fine[1] > fine[3] + 0.2  # one matching word each, not both
    # mean pooling: the big red circle (and the big yellow star) outweigh one patch with the small red star
    assert coarse[2] > coarse[1] and coarse[3] > coarse[1]


def test_patch_color_identity_names_the_grid_and_is_stable():
    first, again = PatchColor(PatchColorConfig()), PatchColor(PatchColorConfig())
    frames = [_background()]
    _draw(frames[0], "triangle", "magenta", 200, 100, 50)
    assert first.identity == again.identity
    assert torch.equal(first.encode_frames(frames), again.encode_frames(frames))
    assert PatchColor(PatchColorConfig(grid_rows=3, grid_cols=4)).identity != first.identity
    with pytest.raises(ConfigError, match="grid_rows=0"):
        PatchColor(PatchColorConfig(grid_rows=0))


# ---- clip (CLIP and SigLIP)


def test_clip_gives_projected_patch_tokens_and_text_tokens_in_one_space(tiny_clip):
    encoder = Clip(ClipConfig(model_path=str(tiny_clip)))
    frames = [_background(240, 320), _background(480, 640), _background(32, 32)]
    tokens = encoder.encode_frames(frames)
    config = _config(tiny_clip)
    patches = (config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]) ** 2
    assert tokens.shape == (3, patches, config["projection_dim"]) and tokens.dtype == torch.float32
    text = encoder.encode_text("a red circle")
    assert text.dim() == 2 and text.shape[1] == config["projection_dim"] and text.dtype == torch.float32
    assert torch.isfinite(tokens).all() and torch.isfinite(text).all()


def test_clip_text_tokens_end_with_the_models_own_text_embedding(tiny_clip, tiny_siglip):
    """CLIP pools the EOS token and SigLIP the last one, then project: our last row must be that embedding."""
    from transformers import AutoModel, AutoTokenizer

    for folder in (tiny_clip, tiny_siglip):
        text = "Is a red object on screen now?"
        model = AutoModel.from_pretrained(folder).eval()
        inputs = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")
        with torch.inference_mode():
            pooled = model.get_text_features(**inputs).pooler_output[0]
        tokens = Clip(ClipConfig(model_path=str(folder))).encode_text(text)
        assert tokens.shape[0] == inputs["input_ids"].shape[1]
        torch.testing.assert_close(tokens[-1], pooled)


def test_siglip_patches_go_through_the_attention_pooling_heads_value_path(tiny_siglip):
    encoder = Clip(ClipConfig(model_path=str(tiny_siglip)))
    vision = _config(tiny_siglip)["vision_config"]
    joint = vision["hidden_size"]  # SigLIP's text head projects onto the vision width
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    assert encoder.encode_frames([_background()]).shape == (1, patches, joint)
    assert encoder.encode_text("a blue square").shape[1] == joint
    # when every patch is the same vector the pooled output is that vector's own path, whatever the attention
    head = encoder._model.vision_model.head
    same = torch.randn(1, 1, joint).expand(1, patches, joint)
    with torch.inference_mode():
        per_token, pooled = _pooling_head_per_token(head, same), head(same)
    torch.testing.assert_close(per_token[0], pooled.expand(patches, -1), rtol=1e-5, atol=1e-5)


def test_clip_is_deterministic_and_independent_of_batching(tiny_clip):
    frames = [_background(seed=s) for s in range(3)]
    together = Clip(ClipConfig(model_path=str(tiny_clip), batch_size=2)).encode_frames(frames)
    other = Clip(ClipConfig(model_path=str(tiny_clip)))
    one_by_one = torch.cat([other.encode_frames([f]) for f in frames])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)
    assert torch.equal(other.encode_text("red"), other.encode_text("red"))


def test_clip_gives_the_same_tokens_when_streams_encode_from_several_threads(tiny_clip):
    encoder = Clip(ClipConfig(model_path=str(tiny_clip)))
    frames = [_background(seed=s) for s in range(4)]
    texts = [f"Is a {colour} object on screen now?" for colour in COLOURS]
    serial = [encoder.encode_frames([f]) for f in frames], [encoder.encode_text(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = (
            list(pool.map(lambda f: encoder.encode_frames([f]), frames)),
            list(pool.map(encoder.encode_text, texts)),
        )
    for expected, got in zip(serial[0] + serial[1], threaded[0] + threaded[1], strict=True):
        torch.testing.assert_close(got, expected)


def test_clip_identity_follows_weights_and_dtype(tiny_clip, tmp_path):
    from tests.fixtures.tiny_models import build_tiny_clip

    base = Clip(ClipConfig(model_path=str(tiny_clip)))
    assert Clip(ClipConfig(model_path=str(tiny_clip))).identity == base.identity
    reseeded = Clip(ClipConfig(model_path=str(build_tiny_clip(tmp_path / "clip-seed1", seed=1))))
    assert reseeded.identity != base.identity
    half = Clip(ClipConfig(model_path=str(tiny_clip), dtype=Dtype.bfloat16))
    assert half.identity != base.identity
    tokens = half.encode_frames([_background()])
    assert tokens.dtype == torch.float32
    torch.testing.assert_close(tokens, base.encode_frames([_background()]), rtol=0.1, atol=0.1)


def test_clip_refuses_a_checkpoint_of_another_kind(tiny_qwen25vl):
    with pytest.raises(ConfigError, match="encoder=backend_vision"):
        Clip(ClipConfig(model_path=str(tiny_qwen25vl)))


# ---- backend_vision (Qwen2.5-VL)


def test_backend_vision_gives_merged_tokens_and_input_embeddings(tiny_qwen25vl):
    encoder = BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl)))
    llm_width = _config(tiny_qwen25vl)["text_config"]["hidden_size"]
    tokens = encoder.encode_frames([_background(240, 320), _background(360, 640)])
    assert tokens.shape == (2, (252 // 28) * (336 // 28), llm_width) and tokens.dtype == torch.float32
    text = encoder.encode_text("Is a red object on screen now?")
    assert text.shape[1] == llm_width and text.dtype == torch.float32
    small = BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl), height=56, width=84))
    assert small.encode_frames([_background()]).shape == (1, 2 * 3, llm_width)


def test_backend_vision_matches_the_models_own_image_features_and_embeddings(tiny_qwen25vl):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    frame = _background(252, 336, seed=3)  # the encoder's input size: no resize on either side
    _draw(frame, "square", "cyan", 100, 100, 60)
    text = "What shape is the cyan object on screen now?"
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25vl).eval()
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl)
    inputs = processor.image_processor(images=[frame], return_tensors="pt")
    ids = processor.tokenizer(text)["input_ids"]
    with torch.inference_mode():
        expected = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
        embedded = model.get_input_embeddings()(torch.tensor(ids))
    encoder = BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl)))
    torch.testing.assert_close(encoder.encode_frames([frame])[0], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(encoder.encode_text(text), embedded)


def test_backend_vision_is_independent_of_batching(tiny_qwen25vl):
    frames = [_background(seed=s) for s in range(3)]
    small = dict(model_path=str(tiny_qwen25vl), height=112, width=140)
    together = BackendVision(BackendVisionConfig(**small, batch_size=2)).encode_frames(frames)
    encoder = BackendVision(BackendVisionConfig(**small))
    one_by_one = torch.cat([encoder.encode_frames([f]) for f in frames])
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-4)


def test_backend_vision_identity_follows_weights_and_input_size(tiny_qwen25vl, tmp_path):
    from tests.fixtures.tiny_models import build_tiny_qwen25vl

    base = BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl)))
    assert BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl))).identity == base.identity
    reseeded = build_tiny_qwen25vl(tmp_path / "qwen-seed1", seed=1)
    assert BackendVision(BackendVisionConfig(model_path=str(reseeded))).identity != base.identity
    smaller = BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl), height=56, width=84))
    assert smaller.identity != base.identity


def test_backend_vision_checks_the_input_size_and_the_model_kind(tiny_qwen25vl, tiny_clip):
    with pytest.raises(ConfigError, match="multiples of 28"):
        BackendVision(BackendVisionConfig(model_path=str(tiny_qwen25vl), height=250))
    with pytest.raises(ConfigError, match="encoder=clip"):
        BackendVision(BackendVisionConfig(model_path=str(tiny_clip)))


# ---- conf


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "encoder").glob("*.yaml")))
def test_encoder_conf_composes_and_lists_every_field(option):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose(f"encoder/{option}").encoder
    choice = ENCODERS.parse(node)
    assert choice.name == option
    written = OmegaConf.load(CONF / "encoder" / f"{option}.yaml")
    assert set(OmegaConf.to_container(OmegaConf.structured(choice.config))) == set(written) - {"defaults"}


@pytest.mark.parametrize("option", ["clip", "backend_vision"])
def test_model_encoders_without_a_model_path_say_which_key_to_set(option, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        choice = ENCODERS.parse(compose(f"encoder/{option}").encoder)  # composes and parses without a path
    with pytest.raises(ConfigError, match=r"encoder\.model_path is not set"):
        ENCODERS.build(choice)
    missing = ENCODERS.parse({"name": option, "model_path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="no config.json"):
        ENCODERS.build(missing)


# ---- helpers


def _background(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth, low-saturation warm grey texture, like the synthetic benchmark's."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 16 + 2, width // 16 + 2), dtype=np.float32)
    luma = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    luma = (luma - luma.min()) / max(float(luma.max() - luma.min()), 1e-6)
    tint = np.array([1.0, 0.92, 0.84], np.float32)
    return np.clip((55 + 130 * luma)[..., None] * tint, 0, 255).astype(np.uint8)


def _draw(frame: np.ndarray, shape: str, colour: str, cx: float, cy: float, size: int) -> None:
    rgb = (170, 170, 170) if colour == "grey" else COLOURS[colour]
    cv2.fillPoly(frame, [shape_outline(shape, cx, cy, size, angle_deg=12)], rgb, cv2.LINE_AA)


def _through_h264(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The frames after an H.264 round trip at the synthetic benchmark's quality (crf 20, yuv420p)."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _axis(name: str) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(AXES.index(name)), len(AXES)).float()


def _cos_sim_fine(query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per query token the best patch of each frame, averaged over query tokens: [N]."""
    q = torch.nn.functional.normalize(query, dim=-1)
    k = torch.nn.functional.normalize(tokens, dim=-1)
    return torch.einsum("sd,npd->nsp", q, k).amax(dim=2).mean(dim=1)


def _cos_sim_coarse(query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cosine of the mean query token and each frame's mean patch token: [N]."""
    return torch.nn.functional.cosine_similarity(query.mean(dim=0)[None], tokens.mean(dim=1), dim=-1)
