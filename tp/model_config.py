"""The generator's shape: what ``python -m tp --check-world-size N`` needs, without importing torch.

Every harness run asks the TP path whether its world size splits the model (``harness.launch.probe``) before it starts
a rank; that answer is arithmetic on this dataclass, so it must not cost a ``import torch`` (about a second of
CPU per probe). ``tp.model`` builds the generator from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    dim: int = 64
    """Model width (replicated activations)."""
    heads: int = 8
    """Attention heads; must be divisible by the world size (8 covers one full 8-GPU node)."""
    layers: int = 1
    """Transformer blocks; each does three all_reduces per call (self-attention, cross-attention, MLP).

    One block already issues every kind of collective the TP path has; each more repeats the same three per
    call, at about 1.5 ms of a 2-core box's CPU per gloo all_reduce, and proves nothing more."""
    mlp_hidden: int = 256
    """MLP hidden width; must be divisible by the world size."""
    channels: int = 8
    """Latent channels per token."""
    cond_tokens: int = 8
    """Conditioning embeds length."""
    kv_window_frames: int = 6
    """How many past frames the KV cache keeps."""
    seed: int = 1234
    """Weights are a pure function of this seed."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")

    def valid_world_sizes(self) -> list[int]:
        """Every world size that splits both the heads and the MLP hidden width evenly."""
        return [n for n in range(1, self.heads + 1) if not self.heads % n and not self.mlp_hidden % n]

    def check_world_size(self, world_size: int) -> None:
        if world_size < 1 or self.heads % world_size or self.mlp_hidden % world_size:
            valid = ", ".join(map(str, self.valid_world_sizes()))
            raise ValueError(f"world size {world_size} must divide heads ({self.heads}) and "
                             f"mlp_hidden ({self.mlp_hidden}); valid world sizes: {valid}")
