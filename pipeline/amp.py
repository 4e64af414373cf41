"""Mixed precision that never loses to fp32: `amp: auto` picks bf16 only where it is native.

CPUs differ: with native bf16 (AMX, AVX512-BF16) bf16 autocast runs matmuls ~1.7-4x faster than fp32;
on a CPU without it torch emulates bf16 and the same autocast is ~6-12x *slower*. `auto` decides from
the hardware's features, deterministically (the same answer on every run, rank and resume of a
machine; no timing probe that load could flip):
- CUDA: bf16 where the GPU has it natively (`torch.cuda.is_bf16_supported(including_emulation=False)`:
  compute capability 8.0 and newer), else fp32;
- CPU: bf16 when the CPU flags (/proc/cpuinfo) include `amx_bf16` or `avx512_bf16` and torch's kernel
  set is AVX512-class or newer; else fp32.
The environment variable PRISM_FORCE_FP32=1 makes `auto` choose fp32 (to emulate a CPU without bf16
on one that has it). The decision and its reason are logged and recorded in the stage metrics
(`amp`, `amp_reason`). `bf16` forces bf16, `off` forces fp32. That is the *training* precision (`recommender.amp`).

Ranking (beam search) has its own setting, `evaluate.amp` (`resolve_decode_amp`), read by every path
that ranks: per-epoch validation, `prism evaluate`, `prism recommend` and the Python API. Its default
`off` decodes in fp32, where a user's top-k list and scores do not depend on the batch the user is
decoded in (batch size, padded length, neighbours). `bf16` is an explicit opt-in: faster where bf16
is native, but the matmul kernels round differently for different batch shapes, so a user's list can
change with the batch (measured: 12 of 64 users' top-20 lists between batch 64 and batch 1).
There is no `auto` for ranking. The output head is always fp32 (`PrismRecommender.logits`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from pipeline.utils import ParamError

# kernel sets on which bf16 may be native; AVX2/DEFAULT never have it
_BF16_CAPABLE = ("AVX512", "AMX", "SVE", "ZVECTOR")
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # CPU flags of native bf16 arithmetic (x86; aarch64: bf16)


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; "" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        return ""


def describe_cpu() -> str:
    """Where a speed figure was measured: CPU model, cores, native bf16 flags, torch and its kernel set."""
    bf16 = "+".join(f for f in _BF16_FLAGS if f in cpu_flags()) or "no native bf16"
    return (f"{cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores, {bf16}, "
            f"torch {torch.__version__} kernel set {cpu_capability()}")


@functools.lru_cache(maxsize=None)
def _auto(device_type: str, force_fp32: bool) -> AmpChoice:
    if force_fp32:
        return AmpChoice("off", "PRISM_FORCE_FP32=1: auto resolves to fp32")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return AmpChoice("bf16", "CUDA device with native bf16")
        return AmpChoice("off", "CUDA device without native bf16")
    cap = cpu_capability()
    native = sorted(set(_BF16_FLAGS) & cpu_flags())
    if not native:
        return AmpChoice("off", f"CPU without native bf16 (no {'/'.join(_BF16_FLAGS)} flag; kernel set {cap}): "
                                "bf16 autocast would be emulated, slower")
    if not any(cap.upper().startswith(c) for c in _BF16_CAPABLE):
        return AmpChoice("off", f"CPU flags {' '.join(native)} but torch's kernel set is {cap}: fp32")
    return AmpChoice("bf16", f"CPU with native bf16 (flags {' '.join(native)}, kernel set {cap})")


def resolve_amp(amp, device: str) -> AmpChoice:
    """What `amp` (auto | bf16 | off) means on `device` here; `auto` is decided once per process."""
    amp = _normalise(amp)
    if amp == "off":
        return AmpChoice("off", "amp: off (fp32)")
    if amp == "bf16":
        return AmpChoice("bf16", "amp: bf16 (forced)")
    return _auto("cuda" if str(device).startswith("cuda") else "cpu", os.environ.get("PRISM_FORCE_FP32") == "1")


DECODE_AMP = ("off", "bf16")


def resolve_decode_amp(amp, device: str) -> AmpChoice:
    """The ranking precision `evaluate.amp`: `off` (fp32, batch-invariant rankings) | `bf16` (opt-in,
    batch-dependent rankings). See the module docstring."""
    amp = str(amp).lower() if amp is not False else "off"
    if amp not in DECODE_AMP:  # the training values minus `auto`
        raise ParamError(f"evaluate.amp (the ranking precision) must be 'off' (fp32: a user's ranking does not "
                         f"depend on its batch) or 'bf16' (faster where bf16 is native, rankings depend on the "
                         f"batch), got '{amp}'")
    if amp == "off":
        return AmpChoice("off", "evaluate.amp: off (fp32 ranking, batch-invariant)")
    return AmpChoice("bf16", "evaluate.amp: bf16 (opt-in; rankings may depend on the batch)")


def autocast(device: str, choice: AmpChoice | str):
    """The autocast context of a resolved choice (or of a raw `amp` value, resolved here)."""
    if not isinstance(choice, AmpChoice):
        choice = resolve_amp(choice, device)
    if not choice.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)
