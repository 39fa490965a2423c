"""The quantization plan: for each quantized module, its bits, granularity and activation mode.

A plan is built for a method (`build_plan`) or read from YAML that a user or the search wrote,
validated against the model, and saved next to the quantized weights, so whoever loads them
knows exactly what was done. `quantize(model, plan)` (apply.py) carries it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pipeline.options import Method, values
from pipeline.quant.activation import ACT_MODES, ActSpec
from pipeline.quant.errors import PlanError
from pipeline.quant.granularity import GRANULARITIES, Granularity
from pipeline.quant.quantizer import FP_BITS, check_bits
from pipeline.quant.targets import select

METHODS = values(Method)


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
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = {k: asdict(v) for k, v in self.layers.items()}
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, source: str = "plan") -> QuantPlan:
        if not isinstance(d, dict):
            raise PlanError(f"{source}: expected a mapping, got {type(d).__name__}")
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
    def read(cls, path: str | Path) -> QuantPlan:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise PlanError(f"{path}: cannot read the quantization plan ({e})") from None
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

    def validate(self, in_features: dict[str, int]) -> None:
        """check(), and every named module is a Linear of the model whose input size its group
        sizes divide; PlanError otherwise."""
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

    def needs_ranges(self) -> bool:
        return any(lp.act_spec.static for lp in self.layers.values())


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
) -> QuantPlan:
    """The uniform plan of a method.

    rtn:  per-output-channel weights; activations `static` (per tensor, over all timesteps).
    qdit: weights in groups of `group_size`; activations `dynamic`, per token, in groups of
          `act_group_size` (default: the same g as the weights).
    act_mode other than `auto` overrides the method's activation mode (for ablations).
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
    mode = {"rtn": "static", "qdit": "dynamic"}[method] if act_mode == "auto" else act_mode
    for name in select(in_features, include, exclude):
        if method == "rtn":
            lp = LayerPlan(
                weight_bits,
                "channel",
                None,
                weight_symmetric,
                act_bits,
                mode,
                act_group_size if mode == "dynamic" else None,
                act_symmetric,
            )
        else:
            g_act = (act_group_size or group_size) if mode == "dynamic" else None
            lp = LayerPlan(weight_bits, "group", group_size, weight_symmetric, act_bits, mode, g_act, act_symmetric)
        if act_bits == FP_BITS:
            lp.act_mode, lp.act_group_size = "none", None
        plan.layers[name] = lp
    plan.validate(in_features)
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
    return f"{plan.method} {', '.join(parts)}{more}{extra}, {len(plan.layers)} layers"
