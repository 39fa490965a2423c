"""The paper's ablation and bit-setting sweep as parameter overrides.

A setting is (bits, method, seed). Methods, each adding one idea of Q-DiT to the one before:
  rtn      round-to-nearest: per-channel weights, static per-tensor activations (the baseline)
  groups   + group-wise weights (quant.weight.group_size), activations still static
  dynamic  + dynamic activation quantization, per token and group, at every forward
  qdit     + the per-layer group-size search: full Q-DiT
Seed s moves every random choice except the trained model: sampling (sample.seed = 3s),
calibration (3s + 1), the search's images (3s + 2) and its evolution (s); s = 0 is params.yaml's
defaults. Pure: no DVC or MLflow here; stages/sweep.py queues the settings, stages/report.py
reads them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.options import SweepMethod, values

METHODS = values(SweepMethod)
LABELS = {"rtn": "RTN", "groups": "+ groups", "dynamic": "+ dynamic act.", "qdit": "Q-DiT (+ search)"}
_BITS = re.compile(r"^W(\d+)A(\d+)$")
_METHOD_OVERRIDES = {
    "rtn": {"quant.method": "rtn", "quant.act.mode": "auto", "search.enabled": "false"},
    "groups": {"quant.method": "qdit", "quant.act.mode": "static", "search.enabled": "false"},
    "dynamic": {"quant.method": "qdit", "quant.act.mode": "dynamic", "search.enabled": "false"},
    "qdit": {"quant.method": "qdit", "quant.act.mode": "dynamic", "search.enabled": "true"},
}


def parse_bits(text: str) -> tuple[int, int]:
    """'W4A8' -> (4, 8); ValueError naming the format otherwise."""
    m = _BITS.match(str(text).strip().upper())
    if not m:
        raise ValueError(f"bit setting {text!r}; expected W<bits>A<bits>, e.g. W4A8 or W4A16")
    return int(m.group(1)), int(m.group(2))


def bits_label(w: int, a: int) -> str:
    return f"W{w}A{a}"


@dataclass(frozen=True)
class Setting:
    bits: str
    method: str
    seed: int

    def name(self, sweep: str) -> str:
        return f"{sweep}-{self.bits.lower()}-{self.method}-s{self.seed}"

    def overrides(self) -> dict[str, str]:
        w, a = parse_bits(self.bits)
        s = self.seed
        return {
            "quant.weight.bits": str(w),
            "quant.act.bits": str(a),
            **_METHOD_OVERRIDES[self.method],
            "sample.seed": str(3 * s),
            "calibrate.seed": str(3 * s + 1),
            "search.image_seed": str(3 * s + 2),
            "search.seed": str(s),
        }


def settings(bits: list[str], methods: list[str], ablation_bits: list[str], seeds: list[int]) -> list[Setting]:
    """`methods` at every bit setting, plus every method at `ablation_bits`; one per seed.
    Settings whose activations are not quantized (A16) skip `groups`/`dynamic`, which would
    repeat `qdit` without search."""
    out: list[Setting] = []
    for s in seeds:  # seed by seed: a sweep stopped early still has whole tables
        for b in dict.fromkeys(list(bits) + list(ablation_bits)):
            w, a = parse_bits(b)
            chosen = METHODS if b in ablation_bits else tuple(m for m in METHODS if m in methods)
            for m in chosen:
                if not (a >= 16 and m in ("groups", "dynamic")):
                    out.append(Setting(bits_label(w, a), m, int(s)))
    return out


def method_of(params: dict) -> str:
    """The method of one experiment from its (dotted) params, the inverse of the overrides."""
    if params.get("quant.method") == "rtn":
        return "rtn"
    if params.get("quant.method") != "qdit":
        return str(params.get("quant.method"))
    if params.get("search.enabled") in (True, "true", "True"):
        return "qdit"
    return "groups" if str(params.get("quant.act.mode", "")).startswith("static") else "dynamic"
