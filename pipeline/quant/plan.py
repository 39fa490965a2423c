"""The quantization plan: for each quantized module, its bits, granularity and activation mode.

A plan is built for a method (`build_plan`) or read from YAML that a user or the search wrote,
validated against the model, and saved next to the quantized weights, so whoever loads them
knows exactly what was done. `quantize(model, plan)` (apply.py) carries it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pipeline.options import Method, Salience, Softmax, values
from pipeline.quant.activation import ACT_MODES, ActSpec
from pipeline.quant.errors import PlanError
from pipeline.quant.granularity import GRANULARITIES, Granularity
from pipeline.quant.quantizer import FP_BITS, check_bits
from pipeline.quant.targets import select

METHODS = values(Method)


@dataclass(frozen=True)
class Recipe:
    """What a method does by default; build_plan's arguments adjust it."""

    granularity: str  # of the weights: channel | group
    act_mode: str  # static | dynamic
    smooth_alpha: float | None = None  # smoothing strength; None: no smoothing
    salience: str = "max"
    smooth_explicit: bool = True  # also smooth inputs that fold nowhere (fc2), at run time
    reparam: bool = False  # RepQ-ViT on the inputs that fold into the adaLN modulation
    softmax: str = "uniform"
    lowrank_rank: int = 0


RECIPES = {
    "rtn": Recipe("channel", "static"),
    "qdit": Recipe("group", "dynamic"),
    "smoothquant": Recipe("channel", "static", smooth_alpha=0.5),
    # PTQ4DiT re-parameterises offline only: q/k/v, fc1 (adaLN) and the attention projection (V)
    "ptq4dit": Recipe("channel", "static", smooth_alpha=0.5, salience="spearman", smooth_explicit=False),
    "repq": Recipe("channel", "static", reparam=True, softmax="log2"),
    "svdquant": Recipe("group", "dynamic", smooth_alpha=0.5, lowrank_rank=32),
}


@dataclass
class LayerPlan:
    weight_bits: int = FP_BITS
    granularity: str = "group"
    group_size: int | None = None
    weight_symmetric: bool = False
    act_bits: int = FP_BITS
    act_mode: str = "none"
    act_group_size: int | None = None
    act_symmetric: bool = False
    lowrank_rank: int = 0  # SVDQuant: a 16-bit rank-r branch beside the quantized residual

    @property
    def weight_granularity(self) -> Granularity:
        return Granularity(self.granularity, self.group_size if self.granularity == "group" else None)

    @property
    def act_spec(self) -> ActSpec:
        return ActSpec(self.act_bits, self.act_mode, self.act_group_size, self.act_symmetric)


@dataclass
class QuantPlan:
    method: str = "none"
    clip_search: bool = False
    gptq: bool = False  # GPTQ rounding (needs calibration inputs) instead of round-to-nearest
    gptq_block_size: int = 128  # columns per GPTQ block (whole groups)
    gptq_damp: float = 0.01  # added to the Hessian's diagonal, relative to its mean
    attn_bits: int = FP_BITS
    attn_softmax: str = "uniform"  # uniform | log2 (RepQ-ViT), for attn_bits < 16
    smooth_alpha: float | None = None  # smoothing (transform.py); None: off
    smooth_salience: str = "max"  # max (SmoothQuant) | spearman (PTQ4DiT)
    smooth_explicit: bool = True  # also smooth the inputs no layer absorbs, at run time
    reparam: bool = False  # RepQ-ViT: per-channel ranges of the adaLN-modulated inputs
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = {k: asdict(v) for k, v in self.layers.items()}
        d["layer_count"] = len(self.layers)  # last: a file cut short lacks it (see read)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, source: str = "plan") -> QuantPlan:
        if not isinstance(d, dict):
            raise PlanError(f"{source}: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        count = d.pop("layer_count", None)
        if count is not None and count != len(d.get("layers") or {}):
            raise PlanError(
                f"{source}: {len(d.get('layers') or {})} layers where its layer_count says {count}; "
                "the file is cut short or was edited: write it again"
            )
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise PlanError(f"{source}: unknown keys {sorted(extra)}; allowed: {sorted(known)}")
        layer_keys = {f.name for f in fields(LayerPlan)}
        layers = {}
        for name, spec in (d.get("layers") or {}).items():
            if not isinstance(spec, (dict, type(None))):
                raise PlanError(f"{source}: layer {name}: expected a mapping, got {type(spec).__name__}")
            bad = set(spec or {}) - layer_keys
            if bad:
                raise PlanError(f"{source}: layer {name}: unknown keys {sorted(bad)}; allowed: {sorted(layer_keys)}")
            layers[name] = LayerPlan(**(spec or {}))
        return cls(**{k: v for k, v in d.items() if k != "layers"}, layers=layers)

    @classmethod
    def read(cls, path: str | Path, written: bool = False) -> QuantPlan:
        """`written`: a plan this library wrote (an artifact), which must end with its
        layer_count; a user's plan file may leave it out."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise PlanError(f"{path}: cannot read the quantization plan ({e})") from None
        if written and isinstance(data, dict) and "layer_count" not in data:
            raise PlanError(
                f"{path}: the quantization plan lacks its last key, layer_count: it is cut short "
                "(or older than that key: write it again)"
            )
        plan = cls.from_dict(data, str(path))
        try:
            plan.check()
        except PlanError as e:
            raise PlanError(f"{path}: not a valid quantization plan: {e}") from None
        return plan

    def check(self) -> None:
        """Every setting is supported (whatever the model); PlanError otherwise."""
        if self.method not in METHODS:
            raise PlanError(f"plan method {self.method!r}; allowed: {', '.join(METHODS)}")
        check_bits(self.attn_bits, "attn_bits")
        if self.attn_softmax not in values(Softmax):
            raise PlanError(f"attn_softmax {self.attn_softmax!r}; allowed: {', '.join(values(Softmax))}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise PlanError(f"smoothing alpha {self.smooth_alpha}; allowed: a number from 0 to 1, or null (off)")
        if self.smooth_salience not in values(Salience):
            raise PlanError(f"smooth_salience {self.smooth_salience!r}; allowed: {', '.join(values(Salience))}")
        if self.gptq and not (self.gptq_block_size >= 1 and 0 < self.gptq_damp < 1):
            raise PlanError(
                f"GPTQ block size {self.gptq_block_size} and damping {self.gptq_damp}; allowed: "
                "a block size >= 1 and 0 < damping < 1"
            )
        for name, lp in self.layers.items():
            check_bits(lp.weight_bits, f"{name}: weight_bits")
            check_bits(lp.act_bits, f"{name}: act_bits")
            if lp.granularity not in GRANULARITIES:
                raise PlanError(f"{name}: granularity {lp.granularity!r}; allowed: {', '.join(GRANULARITIES)}")
            if lp.act_mode not in ACT_MODES:
                raise PlanError(f"{name}: act_mode {lp.act_mode!r}; allowed: {', '.join(ACT_MODES)}")
            if not isinstance(lp.lowrank_rank, int) or lp.lowrank_rank < 0:
                raise PlanError(f"{name}: lowrank_rank {lp.lowrank_rank!r}; allowed: an integer >= 0 (0: none)")
            if lp.lowrank_rank and lp.weight_bits == FP_BITS:
                raise PlanError(f"{name}: a low-rank branch beside 16-bit weights; allowed: lowrank_rank 0")

    def validate(self, in_features: dict[str, int], out_features: dict[str, int] | None = None) -> None:
        """check(), and every named module is a Linear of the model whose input size its group
        sizes divide, and (given out_features) whose low-rank branch is smaller than it is in
        16 bits; PlanError otherwise."""
        self.check()
        for name, lp in self.layers.items():
            if name not in in_features:
                sample = ", ".join(list(in_features)[:4])
                raise PlanError(
                    f"plan names module {name!r}, which is not a Linear of the model "
                    f"(its linears are named like {sample}, ...)"
                )
            c = in_features[name]
            if lp.weight_bits != FP_BITS:
                lp.weight_granularity.check(name, c)
            if lp.act_mode == "dynamic" and lp.act_group_size is not None:
                Granularity("group", lp.act_group_size).check(f"{name} (activations)", c)
            if lp.lowrank_rank and out_features is not None:
                check_rank(name, lp.lowrank_rank, c, out_features[name], lp.weight_bits)

    def needs_ranges(self) -> bool:
        return any(lp.act_spec.static for lp in self.layers.values())

    def needs_stats(self) -> bool:
        """Static activation ranges or input transforms: both come from activation statistics."""
        return self.needs_ranges() or self.transforms()

    def transforms(self) -> bool:
        return bool(self.layers) and (self.smooth_alpha is not None or self.reparam)


def check_rank(name: str, rank: int, c: int, o: int, weight_bits: int) -> None:
    """A rank-r branch [o, r] x [r, c] in 16 bits beside the residual at weight_bits must leave
    the layer smaller than its 16-bit weight, and r <= min(c, o)."""
    if rank > min(c, o):
        raise PlanError(f"{name}: low-rank rank {rank} exceeds min(in, out) = {min(c, o)}; allowed: 0 to {min(c, o)}")
    most = (FP_BITS - weight_bits) * c * o // (FP_BITS * (c + o))
    if rank > most:
        raise PlanError(
            f"{name}: low-rank rank {rank} makes the layer ({c} -> {o}, W{weight_bits}) bigger than in 16 bits; "
            f"allowed: 0 to {most}"
        )


def build_plan(
    in_features: dict[str, int],
    *,
    method: str,
    include,
    exclude,
    weight_bits: int,
    group_size: int,
    weight_symmetric: bool,
    clip_search: bool,
    gptq: bool,
    act_bits: int,
    act_mode: str,
    act_group_size: int | None,
    act_symmetric: bool,
    attn_bits: int,
    gptq_block_size: int = 128,
    gptq_damp: float = 0.01,
    smooth_alpha: float | None = None,
    lowrank_rank: int | None = None,
    out_features: dict[str, int] | None = None,
    weight_only=(),
) -> QuantPlan:
    """The uniform plan of a method (RECIPES says what each does).

    Weights per output channel (`channel` recipes) or in groups of `group_size`; activations
    `static` (per tensor, over all timesteps) or `dynamic` (per token, in groups of
    `act_group_size`, default the weights' g; the whole token for per-channel weights).
    act_mode other than `auto` overrides the method's activation mode (for ablations);
    smooth_alpha and lowrank_rank other than None override the method's (qdit: none).
    `weight_only`: patterns of further linears whose weights are quantized as the others' and
    whose inputs stay 16-bit (the Q-DiT reference quantizes the adaLN modulation so in GPTQ mode).
    """
    if method not in METHODS:
        raise PlanError(f"method {method!r}; allowed: {', '.join(METHODS)}")
    plan = QuantPlan(
        method=method,
        clip_search=clip_search,
        gptq=gptq,
        gptq_block_size=gptq_block_size,
        gptq_damp=gptq_damp,
        attn_bits=attn_bits,
    )
    if method == "none":
        plan.attn_bits = FP_BITS
        return plan
    r = RECIPES[method]
    plan.attn_softmax = r.softmax
    plan.smooth_alpha = r.smooth_alpha if smooth_alpha is None else smooth_alpha
    plan.smooth_salience, plan.smooth_explicit = r.salience, r.smooth_explicit
    plan.reparam = r.reparam and act_bits != FP_BITS  # it re-parameterises activation ranges
    rank = r.lowrank_rank if lowrank_rank is None else lowrank_rank
    mode = r.act_mode if act_mode == "auto" else act_mode
    for name in select(in_features, include, exclude):
        if r.granularity == "channel":
            g_act = act_group_size if mode == "dynamic" else None
            lp = LayerPlan(weight_bits, "channel", None, weight_symmetric, act_bits, mode, g_act, act_symmetric)
        else:
            g_act = (act_group_size or group_size) if mode == "dynamic" else None
            lp = LayerPlan(weight_bits, "group", group_size, weight_symmetric, act_bits, mode, g_act, act_symmetric)
        if act_bits == FP_BITS:
            lp.act_mode, lp.act_group_size = "none", None
        if weight_bits != FP_BITS:
            lp.lowrank_rank = rank
        plan.layers[name] = lp
    for name in select(in_features, list(weight_only), exclude) if weight_only else []:
        if name not in plan.layers and weight_bits != FP_BITS:
            g = group_size if r.granularity == "group" else None
            plan.layers[name] = LayerPlan(weight_bits, r.granularity, g, weight_symmetric)
    plan.validate(in_features, out_features)
    return plan


def describe(plan: QuantPlan) -> str:
    """One line, e.g. 'qdit W4A8 (group 32, dynamic), 24 layers'."""
    if plan.method == "none" or not plan.layers:
        return "fp (method none)"
    settings = sorted(
        {(lp.weight_bits, lp.act_bits, lp.granularity, lp.group_size, lp.act_mode) for lp in plan.layers.values()}
    )
    parts = []
    for wb, ab, gran, g, mode in settings[:3]:
        gtxt = f"group {g}" if gran == "group" else gran
        parts.append(f"W{wb}A{ab} ({gtxt}, {mode})")
    more = f" +{len(settings) - 3} more" if len(settings) > 3 else ""
    extra = " + GPTQ" if plan.gptq else ""
    if plan.smooth_alpha is not None:
        extra += f" + smoothing (alpha {plan.smooth_alpha:g}, {plan.smooth_salience})"
    if plan.reparam:
        extra += " + RepQ re-parameterisation"
    ranks = {lp.lowrank_rank for lp in plan.layers.values() if lp.lowrank_rank}
    if ranks:
        extra += f" + rank-{max(ranks)} branch"
    return f"{plan.method} {', '.join(parts)}{more}{extra}, {len(plan.layers)} layers"
