"""What every local-checkpoint encoder needs: the model_path check, the weights digest that keys the
embedding cache, dtype and device resolution, and the fixed-size frame resize."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import torch

from harness.errors import ConfigError
from harness.hashing import content_hash


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def require_model_path(name: str, model_path: str, group: str = "encoder") -> Path:
    """The checkpoint folder, or a ConfigError saying which key to set and to what (`group`: encoder, backend)."""
    if not model_path:
        raise ConfigError(
            f"{group}={name}: {group}.model_path is not set. Pass {group}.model_path=/path/to/checkpoint, a local "
            "folder with config.json, the weights and the processor files (nothing is downloaded)"
        )
    folder = Path(model_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{group}={name}: {group}.model_path={model_path}: no config.json there. It must be a local checkpoint "
            "folder (config.json, *.safetensors, processor and tokenizer files), e.g. a hub snapshot"
        )
    return folder


def require_model_type(encoder: str, folder: Path, supported: tuple[str, ...], other: str) -> str:
    """The checkpoint's model_type, or a ConfigError unless it is one of `supported` (`other`: what to use instead)."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    if model_type not in supported:
        raise ConfigError(
            f"encoder={encoder}: {folder} holds a {model_type!r} model; this encoder reads {', '.join(supported)} "
            f"({other})"
        )
    return str(model_type)


def checkpoint_digest(folder: Path) -> str:
    """sha256 (16 hex) over the files that decide the numbers: weights, config, processor and tokenizer files.

    Weights are the *.safetensors (or, without any, pytorch_model*.bin) that from_pretrained loads; other formats
    a hub snapshot may carry (TF, Flax) are ignored. File hashes are remembered per process (path, size, mtime).
    """
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise ConfigError(f"{folder}: no *.safetensors or pytorch_model*.bin weights in the checkpoint folder")
    metadata = sorted(p for suffix in ("json", "txt", "model", "jinja") for p in folder.glob(f"*.{suffix}"))
    digest = hashlib.sha256()
    for path in sorted({*weights, *metadata}):
        digest.update(f"{path.name}:{content_hash(path)}\n".encode())
    return digest.hexdigest()[:16]


def resolve_device(encoder: str, device: str) -> torch.device:
    """ "auto" is cuda when available, else cpu; an unavailable cuda is a ConfigError, not a crash mid-sweep."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"encoder={encoder}: encoder.device={device!r}: {e}. Use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"encoder={encoder}: encoder.device={device!r} but CUDA is not available; use cpu or auto")
    return resolved


def resize_frames(frames: Sequence[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    """Every frame at exactly height x width (no crop, so nothing near an edge is lost): area when shrinking."""
    resized = []
    for frame in frames:
        if frame.shape[:2] == (height, width):
            resized.append(np.ascontiguousarray(frame))
            continue
        shrinking = frame.shape[0] >= height and frame.shape[1] >= width
        method = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
        resized.append(cv2.resize(frame, (width, height), interpolation=method))
    return resized
