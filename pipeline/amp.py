"""Mixed precision that never loses to fp32: `amp: auto` picks bf16 only where it is faster.

CPUs differ: with native bf16 (AMX, AVX512-BF16) bf16 autocast runs matmuls ~1.7x faster than fp32;
on an AVX2-only CPU torch emulates bf16 and the same autocast is ~6-12x *slower*. So `auto` decides
per machine and per process:
- CUDA: bf16 when the GPU supports it (`torch.cuda.is_bf16_supported()`), else fp32;
- CPU: fp32 unless torch reports an AVX512-class (or newer) kernel set *and* a one-off probe
  (a recommender-sized matmul, ~0.1 s) runs at least `SPEEDUP` times faster under bf16 autocast.
The decision and its reason are logged and recorded in the stage metrics (`amp`, `amp_reason`).
`bf16` forces bf16, `off` forces fp32. Ranking always computes the output head in fp32
(`PrismRecommender.logits`), whatever the autocast.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import torch

from pipeline.utils import ParamError

SPEEDUP = 1.15  # bf16 must beat fp32 by this factor on the probe to be chosen
# kernel sets on which bf16 may be native; AVX2/DEFAULT never have it
_BF16_CAPABLE = ("AVX512", "AMX", "SVE", "ZVECTOR")


@dataclass(frozen=True)
class AmpChoice:
    mode: str  # "bf16" | "off"
    reason: str

    @property
    def enabled(self) -> bool:
        return self.mode == "bf16"


def _normalise(amp) -> str:
    if amp is False:  # a YAML 1.1 reader (not ours) turns a bare `off` into False
        return "off"
    amp = str(amp).lower()
    if amp not in ("auto", "bf16", "off"):
        raise ParamError(f"amp must be 'auto', 'bf16' or 'off', got '{amp}'")
    return amp


def cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch
        return "unknown"


def _probe_cpu(rows: int = 1024, dim: int = 512, reps: int = 6) -> tuple[float, float]:
    """Seconds per matmul (rows x dim @ dim x 2dim) in fp32 and under bf16 autocast."""
    x = torch.randn(rows, dim)
    lin = torch.nn.Linear(dim, 2 * dim)

    def timed(ctx) -> float:
        with torch.no_grad(), ctx():
            lin(x)  # warm-up (bf16 weight cast, kernel selection)
            t0 = time.perf_counter()
            for _ in range(reps):
                lin(x)
            return (time.perf_counter() - t0) / reps

    fp32 = timed(contextlib.nullcontext)
    bf16 = timed(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    return fp32, bf16


@functools.lru_cache(maxsize=None)
def _auto(device_type: str) -> AmpChoice:
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return AmpChoice("bf16", "CUDA device supports bf16")
        return AmpChoice("off", "CUDA device without bf16 support")
    cap = cpu_capability()
    if not any(cap.upper().startswith(c) for c in _BF16_CAPABLE):
        return AmpChoice("off", f"CPU kernel set {cap}: no native bf16 (bf16 autocast would be emulated, slower)")
    fp32, bf16 = probe_cpu()
    speed = fp32 / max(bf16, 1e-12)
    if speed >= SPEEDUP:
        return AmpChoice("bf16", f"CPU kernel set {cap}: bf16 probe {speed:.2f}x faster than fp32")
    return AmpChoice("off", f"CPU kernel set {cap}: bf16 probe only {speed:.2f}x fp32 (needs {SPEEDUP}x)")


def probe_cpu() -> tuple[float, float]:
    """The CPU probe (separate so that tests can simulate its answer)."""
    return _probe_cpu()


def resolve_amp(amp, device: str) -> AmpChoice:
    """What `amp` (auto | bf16 | off) means on `device` here; `auto` is decided once per process."""
    amp = _normalise(amp)
    if amp == "off":
        return AmpChoice("off", "amp: off (fp32)")
    if amp == "bf16":
        return AmpChoice("bf16", "amp: bf16 (forced)")
    return _auto("cuda" if str(device).startswith("cuda") else "cpu")


def autocast(device: str, choice: AmpChoice | str):
    """The autocast context of a resolved choice (or of a raw `amp` value, resolved here)."""
    if not isinstance(choice, AmpChoice):
        choice = resolve_amp(choice, device)
    if not choice.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)
