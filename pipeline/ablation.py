"""The paper's ablation and bit-setting sweep as parameter overrides.

A setting is (bits, method, seed). Methods, each adding one idea of Q-DiT to the one before:
  rtn      round-to-nearest: per-channel weights, static per-tensor activations (the baseline)
  groups   + group-wise weights (quant.weight.group_size), activations still static
  dynamic  + dynamic activation quantization, per token and group, at every forward
  qdit     + the per-layer group-size search: full Q-DiT
The peers run beside them (docs/methods.md): smoothquant, ptq4dit, repq, svdquant, each with
its own quantizers and no search. Any method takes options after '+': `qdit+gptq` (GPTQ
rounding), `+smooth` (smoothing, alpha 0.5), `+lowrank` (a rank-32 16-bit branch), e.g.
`qdit+gptq+lowrank`; the per-channel methods also `+dynamic` (per-token dynamic activations:
SmoothQuant's dynamic variant, or, on `rtn`, Q-DiT's dynamic activations at per-channel cost).
Seed s moves every random choice except the trained model: sampling (sample.seed = 3s),
calibration (3s + 1), the search's images (3s + 2) and its evolution (s); s = 0 is params.yaml's
defaults. Pure: no DVC or MLflow here; stages/sweep.py queues the settings, stages/report.py
reads them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.options import SweepMethod, SweepOption, values

METHODS = values(SweepMethod)
OPTIONS = values(SweepOption)
ABLATION = ("rtn", "groups", "dynamic", "qdit")  # every one of them at sweep.ablation_bits
SMOOTH_ALPHA, LOWRANK_RANK = 0.5, 32  # what +smooth and +lowrank set
LABELS = {
    "rtn": "RTN",
    "groups": "+ groups",
    "dynamic": "+ dynamic act.",
    "qdit": "Q-DiT (+ search)",
    "smoothquant": "SmoothQuant",
    "ptq4dit": "PTQ4DiT",
    "repq": "RepQ-ViT",
    "svdquant": "SVDQuant",
}
PER_CHANNEL = ("rtn", "smoothquant", "ptq4dit", "repq")  # static activations unless +dynamic
OPTION_LABELS = {
    "dynamic": "dynamic act.",
    "gptq": "GPTQ",
    "smooth": "smoothing",
    "lowrank": f"rank-{LOWRANK_RANK} branch",
}
_BITS = re.compile(r"^W(\d+)A(\d+)$")
_METHOD_OVERRIDES = {
    "rtn": {"quant.method": "rtn", "quant.act.mode": "auto", "search.enabled": "false"},
    "groups": {"quant.method": "qdit", "quant.act.mode": "static", "search.enabled": "false"},
    "dynamic": {"quant.method": "qdit", "quant.act.mode": "dynamic", "search.enabled": "false"},
    "qdit": {"quant.method": "qdit", "quant.act.mode": "dynamic", "search.enabled": "true"},
} | {m: {"quant.method": m, "quant.act.mode": "auto", "search.enabled": "false"} for m in METHODS if m not in ABLATION}
_OPTION_OVERRIDES = {
    "dynamic": {"quant.act.mode": "dynamic"},
    "gptq": {"quant.weight.gptq": "true"},
    "smooth": {"quant.smooth.alpha": str(SMOOTH_ALPHA)},
    "lowrank": {"quant.lowrank.rank": str(LOWRANK_RANK)},
}


def split_method(text: str) -> tuple[str, tuple[str, ...]]:
    """'qdit+gptq+lowrank' -> ('qdit', ('gptq', 'lowrank')); ValueError naming what is allowed."""
    base, *options = str(text).split("+")
    if base not in METHODS:
        raise ValueError(f"method {base!r}; allowed: {', '.join(METHODS)}")
    for o in options:
        if o not in OPTIONS:
            raise ValueError(f"option {o!r} of {text!r}; allowed after '+': {', '.join(OPTIONS)}")
    if len(set(options)) != len(options):
        raise ValueError(f"{text!r} repeats an option")
    if "dynamic" in options and base not in PER_CHANNEL:
        allowed = ", ".join(PER_CHANNEL)
        raise ValueError(f"{text!r}: '+dynamic' applies to {allowed}; {base} is dynamic or static by design")
    return base, tuple(sorted(options, key=OPTIONS.index))


def _qdit_per_channel(base: str, options: tuple[str, ...]) -> bool:
    """`rtn+dynamic`: Q-DiT's dynamic activations with one weight group per row, at the
    per-channel peers' size and bit-operations."""
    return base == "rtn" and "dynamic" in options


def is_ours(method: str) -> bool:
    """Q-DiT's configurations (the ablation's steps past RTN, and `rtn+dynamic`); every other
    method is a peer."""
    base, options = split_method(method)
    return base in ABLATION[1:] or _qdit_per_channel(base, options)


def method_label(method: str) -> str:
    base, options = split_method(method)
    if _qdit_per_channel(base, options):
        return " + ".join(["Q-DiT, per-channel", *(OPTION_LABELS[o] for o in options if o != "dynamic")])
    return " + ".join([LABELS[base], *(OPTION_LABELS[o] for o in options)])


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
        return f"{sweep}-{self.bits.lower()}-{self.method.replace('+', '_')}-s{self.seed}"

    def overrides(self) -> dict[str, str]:
        w, a = parse_bits(self.bits)
        s = self.seed
        base, options = split_method(self.method)
        extra = {k: v for o in options for k, v in _OPTION_OVERRIDES[o].items()}
        return {
            "quant.weight.bits": str(w),
            "quant.act.bits": str(a),
            **_METHOD_OVERRIDES[base],
            **extra,
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
            chosen = list(methods) if b in bits else []
            if b in ablation_bits:
                chosen = list(dict.fromkeys([*ABLATION, *chosen]))
            for m in chosen:
                if not (a >= 16 and m in ("groups", "dynamic")):
                    out.append(Setting(bits_label(w, a), m, int(s)))
    return out


def _set(value) -> bool:
    """A dotted param that is on: not null (dvc exp show writes it 'None'), not 0, not false."""
    return value not in (None, "None", "null", "", 0, "0", False, "false", "False")


def method_of(params: dict) -> str:
    """The method of one experiment from its (dotted) params, the inverse of the overrides."""
    method = str(params.get("quant.method"))
    if method == "qdit" and params.get("search.enabled") not in (True, "true", "True"):
        method = "groups" if str(params.get("quant.act.mode", "")).startswith("static") else "dynamic"
    options = []
    if method in PER_CHANNEL and str(params.get("quant.act.mode", "")) == "dynamic":
        options.append("dynamic")
    if params.get("quant.weight.gptq") in (True, "true", "True"):
        options.append("gptq")
    if _set(params.get("quant.smooth.alpha")) and method not in ("smoothquant", "ptq4dit", "svdquant"):
        options.append("smooth")
    if _set(params.get("quant.lowrank.rank")) and method != "svdquant":
        options.append("lowrank")
    return "+".join([method, *options])
