"""CPU-speed helpers of the recommender, apart from the paper's modules in `model.py` (issue 33): the same
functions as torch's, computed cheaper on a CPU; `tests/test_fused_equivalence.py` and the dropout and
batch-invariance tests pin their behaviour. Measured gains are in docs/log/ (issues 8 and 20), not here.

- `dropout` / `Dropout` / `dropout_stream`: inverted dropout whose CPU keep-mask comes from numpy's SFC64
  (torch's CPU mask generator is slow).
- `attention_written_out`: attention with that dropout on the probabilities (SDPA draws its CPU dropout
  mask with torch's slow generator); `written_out_attention` says when it is used (eager CPU training).
- `as_bias` / `causal_bias`: the attention masks turned into additive biases once for all layers when the
  written-out attention is used (None / unchanged otherwise).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the CPU dropout masks' bit generator: None (one seed per mask), True (a `dropout_stream` not yet
# seeded) or the stream's SFC64
_STREAM: list = [None]


@contextlib.contextmanager
def dropout_stream():
    """Inside, every CPU dropout mask is drawn from one SFC64 stream seeded by a single draw of torch's
    RNG at the first mask (a training step: one draw and one host read instead of one per dropout,
    ~40; none when nothing drops)."""
    _STREAM[0] = True
    try:
        yield
    finally:
        _STREAM[0] = None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (as `F.dropout`). On CPU the keep-mask comes from 16 random bits per element
    drawn by numpy's SFC64 generator, cheaper than torch's CPU mask (mt19937, one 32-bit draw per
    element; measured in docs/log/2026-11-26.md, issue 8), as the scaled mask
    {0, 1/(1−p)} made by numpy (one multiply in torch). The generator is seeded from torch's RNG (per
    call, or once per training step inside `dropout_stream`), so runs stay reproducible from `seed` and
    resume exactly from a checkpoint. p is quantised to 1/65,536. CUDA (fast RNG there) and
    `torch.compile`d graphs (the host draw would break the graph) use `F.dropout`."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():  # traced graphs use the plain mask
        return F.dropout(x, p, True)
    n = x.numel()
    gen = _STREAM[0]
    if gen is None or gen is True:
        gen = np.random.SFC64(int(torch.randint(0, 2 ** 62, (1,)).item()))
        if _STREAM[0] is True:
            _STREAM[0] = gen
    bits = gen.random_raw((n + 3) // 4).view(np.int16)[:n]
    keep = np.where(bits >= round(p * 65536) - 32768, np.float32(1.0 / (1.0 - p)), np.float32(0.0))
    return x * torch.from_numpy(keep).view(x.shape).to(x.dtype)


class Dropout(nn.Dropout):
    """`nn.Dropout` with `dropout`'s cheaper CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def written_out_attention(training: bool, p: float, x: torch.Tensor) -> bool:
    """Whether attention is computed written out with `dropout`'s cheaper mask instead of SDPA: CPU
    training with attention dropout, eager (compiled graphs and CUDA use SDPA)."""
    return training and p > 0 and x.device.type == "cpu" and not torch.compiler.is_compiling()


def attention_written_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                          causal: bool, p: float) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v with `dropout` on the probabilities: SDPA's computation written out. `mask`:
    boolean (True = may attend) or an additive float bias, as SDPA's."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal and mask is None:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    return dropout(torch.softmax(s, dim=-1), p, True) @ v


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask (True = may attend) as the additive bias SDPA would make of it (0 or
    −inf); a float mask (already a bias) as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))


def as_bias(training: bool, p: float, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mask` as an additive bias where the written-out attention will use it (made once for all layers),
    else as it is."""
    return additive_mask(mask) if written_out_attention(training, p, x) else mask


def causal_bias(training: bool, p: float, x: torch.Tensor, t: int) -> torch.Tensor | None:
    """The decoder's causal self-attention mask over t tokens as an additive bias where the written-out
    attention will use it; None (SDPA's `is_causal`) otherwise."""
    if not written_out_attention(training, p, x):
        return None
    return additive_mask(torch.ones(t, t, dtype=torch.bool, device=x.device).tril())
