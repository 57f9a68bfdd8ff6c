"""Encoders put frames and queries into one embedding space, for routers and memory.

`encode_frames` gives token embeddings [N, P, D] (P tokens per frame, the same P for every frame
of a stream), `encode_text` gives [S, D]. `identity` names everything that changes the numbers
(name, weights hash, dtype, input size): it is part of the embedding cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from harness.registry import Registry


class Encoder(Protocol):
    identity: str

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 frames (H x W x 3) -> float32 [N, P, D] on the CPU."""
        ...

    def encode_text(self, text: str) -> torch.Tensor:
        """A query -> float32 [S, D] on the CPU, in the frames' space."""
        ...


ENCODERS: Registry[Encoder] = Registry("encoder")
