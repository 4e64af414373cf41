"""Models saved before the fused layout of issue 20 (separate q/kv projections, per-depth DSI projections,
the MoE gate apart, per-level SSA heads) load into today's `PrismRecommender`: the same function and numbers,
rearranged (`tests/test_fused_equivalence.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def legacy_state_dict(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict of the layout before the fused modules (separate q/kv self-attention projections,
    per-depth DSI projections, the MoE gate and first layers apart, per-level SSA heads) mapped to
    today's layout: the same function, the same numbers, rearranged. Keys of today's layout pass through."""
    sd = dict(sd)
    for key in [k for k in sd if k.endswith(".att.q.weight") and k.startswith(prefix)]:
        base = key[: -len("q.weight")]
        sd[base + "qkv.weight"] = torch.cat([sd.pop(key), sd.pop(base + "kv.weight")], 0)
    for part in ("cont", "col"):
        base = f"{prefix}dsi.{part}."
        if base + "0.0.weight" in sd:
            n = 1 + max(int(k[len(base):].split(".")[0]) for k in sd if k.startswith(base))
            sd[base + "proj.weight"] = torch.cat([sd.pop(f"{base}{l}.0.weight") for l in range(n)], 0)
            sd[base + "proj.bias"] = torch.cat([sd.pop(f"{base}{l}.0.bias") for l in range(n)], 0)
            sd[base + "ln_weight"] = torch.stack([sd.pop(f"{base}{l}.1.weight") for l in range(n)])
            sd[base + "ln_bias"] = torch.stack([sd.pop(f"{base}{l}.1.bias") for l in range(n)])
    moe = f"{prefix}dsi.moe."
    if moe + "gate.weight" in sd:
        w1 = sd.pop(moe + "w1")  # (N, d_in, d_moe)
        n, d_in, m = w1.shape
        sd[moe + "w_in"] = torch.cat([w1.permute(1, 0, 2).reshape(d_in, n * m), sd.pop(moe + "gate.weight").t()], 1)
    if f"{prefix}ssa_reg.0.weight" in sd:
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(prefix + "ssa_reg."))
        reg = [(sd.pop(f"{prefix}ssa_reg.{l}.weight"), sd.pop(f"{prefix}ssa_reg.{l}.bias")) for l in range(n)]
        cls = [(sd.pop(f"{prefix}ssa_cls.{l}.weight"), sd.pop(f"{prefix}ssa_cls.{l}.bias")) for l in range(n)]
        t = max(w.shape[0] for w, _ in cls)
        pad = lambda x: F.pad(x, (0, t - x.shape[-1]))  # noqa: E731  (masked columns: zeros)
        sd[prefix + "ssa_head.weight"] = torch.stack([torch.cat([rw.t(), pad(cw.t())], 1) for (rw, _), (cw, _) in zip(reg, cls)])
        sd[prefix + "ssa_head.bias"] = torch.stack([torch.cat([rb, pad(cb)]) for (_, rb), (_, cb) in zip(reg, cls)])
    return sd


def legacy_layout_hook(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: older models (and checkpoints) load into the fused layout."""
    new = legacy_state_dict(state_dict, prefix)
    state_dict.clear()
    state_dict.update(new)
