"""The quantization plan: for each quantized module, its bits, granularity and activation mode.

A plan is built from params.yaml (`build_plan`) or read from YAML that a user or the search
stage wrote, validated against the model, and saved next to the quantized weights so the
later stages (and users) know exactly what was done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pipeline.quant.activation import ACT_MODES, ActSpec
from pipeline.quant.granularity import GRANULARITIES, Granularity
from pipeline.quant.quantizer import FP_BITS, check_bits
from pipeline.quant.targets import select

METHODS = ("none", "rtn", "qdit")


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
    gptq: bool = False
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
            raise ValueError(f"{source}: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"{source}: unknown keys {sorted(extra)}; allowed: {sorted(known)}")
        layer_keys = {f.name for f in fields(LayerPlan)}
        layers = {}
        for name, spec in (d.get("layers") or {}).items():
            bad = set(spec or {}) - layer_keys
            if bad:
                raise ValueError(f"{source}: layer {name}: unknown keys {sorted(bad)}; allowed: {sorted(layer_keys)}")
            layers[name] = LayerPlan(**(spec or {}))
        return cls(**{k: v for k, v in d.items() if k != "layers"}, layers=layers)

    @classmethod
    def read(cls, path: str | Path) -> QuantPlan:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the quantization plan ({e})") from None
        return cls.from_dict(data, str(path))

    def validate(self, in_features: dict[str, int]) -> None:
        """Every named module exists and every setting is supported; ValueError otherwise."""
        if self.method not in METHODS:
            raise ValueError(f"plan method {self.method!r}; allowed: {', '.join(METHODS)}")
        check_bits(self.attn_bits, "attn_bits")
        for name, lp in self.layers.items():
            if name not in in_features:
                sample = ", ".join(list(in_features)[:4])
                raise ValueError(
                    f"plan names module {name!r}, which is not a Linear of the model "
                    f"(its linears are named like {sample}, ...)"
                )
            c = in_features[name]
            check_bits(lp.weight_bits, f"{name}: weight_bits")
            check_bits(lp.act_bits, f"{name}: act_bits")
            if lp.granularity not in GRANULARITIES:
                raise ValueError(f"{name}: granularity {lp.granularity!r}; allowed: {', '.join(GRANULARITIES)}")
            if lp.weight_bits != FP_BITS:
                lp.weight_granularity.check(name, c)
            if lp.act_mode not in ACT_MODES:
                raise ValueError(f"{name}: act_mode {lp.act_mode!r}; allowed: {', '.join(ACT_MODES)}")
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
) -> QuantPlan:
    """The uniform plan of a method.

    rtn:  per-output-channel weights; activations `static` (per tensor, over all timesteps).
    qdit: weights in groups of `group_size`; activations `dynamic`, per token, in groups of
          `act_group_size` (default: the same g as the weights).
    act_mode other than `auto` overrides the method's activation mode (for ablations).
    """
    if method not in METHODS:
        raise ValueError(f"quant.method {method!r}; allowed: {', '.join(METHODS)}")
    plan = QuantPlan(method=method, clip_search=clip_search, gptq=gptq, attn_bits=attn_bits)
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
        return "fp (quant.method: none)"
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


def plan_from_params(q, in_features: dict[str, int]) -> QuantPlan:
    """The plan params.yaml's `quant` section asks for: the file `quant.plan` if set, else the
    uniform plan of `quant.method`. Validated against the model; ValueError otherwise."""
    if q.plan:
        plan = QuantPlan.read(q.plan)
    else:
        plan = build_plan(
            in_features,
            method=q.method,
            include=list(q.include),
            exclude=list(q.exclude),
            weight_bits=q.weight.bits,
            group_size=q.weight.group_size,
            weight_symmetric=q.weight.symmetric,
            clip_search=q.weight.clip_search,
            gptq=q.weight.gptq,
            act_bits=q.act.bits,
            act_mode=q.act.mode,
            act_group_size=q.act.group_size,
            act_symmetric=q.act.symmetric,
            attn_bits=q.attn_bits,
        )
    plan.validate(in_features)
    return plan
