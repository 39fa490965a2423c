"""The schema of params.yaml: types, ranges and cross-field rules (pydantic v2). The values live
in params.yaml alone: the schema has no defaults, so a key missing from the file is named.

Every stage validates the whole file at start, so a typo anywhere stops it before hours of work,
with one line naming the key, the value and what is allowed (docs/parameters.md says why
pydantic). Importing this module does not import torch: `stages.preset --dry-run` and the
checks before a sweep stay fast.
"""

from __future__ import annotations

import difflib
import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pipeline.ablation import parse_bits, split_method
from pipeline.errors import UserError
from pipeline.options import (
    FP_BITS,
    MAX_BASE_SEED,
    MAX_IMAGES,
    SUPPORTED_BITS,
    Accelerator,
    ActMode,
    Backend,
    BudgetMetric,
    Compile,
    Features,
    Fitness,
    Method,
    Precision,
    Scheduler,
    Strategy,
    SweepMethod,
    SweepOption,
    values,
)


class Section(BaseModel):
    # strict: no silent conversion ("4" is not 4, 1 is not true); enums take their strings
    model_config = ConfigDict(strict=True, extra="forbid", use_enum_values=True)


def _choice(enum: type[Enum]):
    return Annotated[enum, Field(strict=False)]


def _refuse(key: str, value: Any, allowed: str) -> PydanticCustomError:
    """A cross-field rule's refusal, formatted like every other message by load_params."""
    return PydanticCustomError("not_allowed", "{key} is not allowed", {"key": key, "value": value, "allowed": allowed})


def _devices(value):
    if value != "auto" and not (value >= 1 or value == -1):
        raise ValueError("not a device count")
    return value


def _bit_setting(text: str) -> str:
    w, a = parse_bits(text)
    if w not in SUPPORTED_BITS or (a not in SUPPORTED_BITS and a != FP_BITS):
        raise ValueError("unsupported bits")
    return text


def _sweep_method(text: str) -> str:
    split_method(text)
    return text


def _distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError("repeated")
    return items


Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Bits = Annotated[Literal[SUPPORTED_BITS + (FP_BITS,)], Field(description="2 to 8, or 16 (not quantized)")]
Steps = Annotated[int, Field(ge=1, le=1000, description="an integer from 1 to 1000 (the training timesteps)")]
Guidance = Annotated[float, Field(ge=1.0, description="a number >= 1.0 (1.0 = no classifier-free guidance)")]
ImageSeed = Annotated[
    int, Field(ge=0, le=MAX_BASE_SEED, description=f"an integer from 0 to {MAX_BASE_SEED} (image seeds are 32-bit)")
]
ImageCount = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
Name = Annotated[str, Field(pattern=r"\S", description="a non-empty name")]
BitSetting = Annotated[str, AfterValidator(_bit_setting)]
BITS_TEXT = "W<w>A<a> with w from 2 to 8 and a from 2 to 8 or 16, e.g. W4A8"
SWEEP_METHODS_TEXT = (
    f"a non-empty list of {' | '.join(values(SweepMethod))}, each optionally followed by "
    f"+{' / +'.join(values(SweepOption))}, e.g. qdit+gptq"
)
ACT_MODES = ("auto",) + tuple(m.value for m in ActMode if m is not ActMode.NONE)  # auto: the method's


class TinyDiTConfig(Section):
    num_layers: Count
    num_heads: Count
    head_dim: Count
    patch_size: Annotated[Literal[1, 2, 4, 8], Field(description="a divisor of the 8x8 digit images: 1, 2, 4 or 8")]
    train_steps: Count
    batch_size: Count
    learning_rate: Annotated[float, Field(gt=0)]
    warmup_steps: NonNegative
    ema_decay: Annotated[float, Field(ge=0, lt=1)]
    class_dropout: Annotated[
        float, Field(gt=0, lt=1, description="0 < value < 1 (the null label is learnt from these drops)")
    ]


class ClassifierConfig(Section):
    epochs: Count
    batch_size: Count
    learning_rate: Annotated[float, Field(gt=0)]
    holdout: Annotated[float, Field(gt=0, lt=0.5)]


class ModelConfig(Section):
    source: Annotated[
        str, Field(pattern=r"\S", description="'tiny', a local diffusers DiT directory, or a Hugging Face Hub id")
    ]
    seed: NonNegative
    tiny: TinyDiTConfig
    classifier: ClassifierConfig


class CalibrateConfig(Section):
    num_samples: ImageCount
    steps: Steps
    scheduler: _choice(Scheduler)
    guidance_scale: Guidance
    seed: ImageSeed
    batch_size: Count
    shard_size: Count


class StatsConfig(Section):
    batch_size: Count
    top_channels: Count


class WeightQuantConfig(Section):
    bits: Bits
    group_size: Count
    symmetric: bool
    clip_search: bool
    gptq: bool


class ActQuantConfig(Section):
    bits: Bits
    mode: Literal[ACT_MODES]
    group_size: Annotated[Count | None, Field(description="null (the weights' group size) or an integer >= 1")]
    symmetric: bool


class SmoothConfig(Section):
    alpha: Annotated[
        float | None,
        Field(ge=0, le=1, description="null (the method's: 0.5 for smoothquant, ptq4dit, svdquant) or 0 to 1"),
    ]


class LowRankConfig(Section):
    rank: Annotated[
        int | None, Field(ge=0, description="null (the method's: 32 for svdquant, else 0) or an integer >= 0")
    ]


class GPTQConfig(Section):
    block_size: Count
    damp: Annotated[float, Field(gt=0, lt=1)]
    batch_size: Count


class QuantConfig(Section):
    method: _choice(Method)
    weight: WeightQuantConfig
    act: ActQuantConfig
    attn_bits: Bits
    include: Annotated[list[str], Field(min_length=1, description="one or more module-name patterns")]
    exclude: list[str]
    weight_only: list[str]
    plan: str | None
    smooth: SmoothConfig
    lowrank: LowRankConfig
    gptq: GPTQConfig
    backend: _choice(Backend)

    @model_validator(mode="after")
    def _gptq_needs_bits(self):
        if self.weight.gptq and self.weight.bits == FP_BITS:
            raise _refuse("quant.weight.gptq", True, "false when quant.weight.bits is 16 (nothing to round)")
        if self.lowrank.rank and self.weight.bits == FP_BITS:
            raise _refuse("quant.lowrank.rank", self.lowrank.rank, "0 or null when quant.weight.bits is 16")
        return self


class SearchConfig(Section):
    enabled: bool
    group_sizes: Annotated[list[Count], Field(min_length=1, description="a non-empty list of integers >= 1")]
    budget_metric: _choice(BudgetMetric)
    budget: Annotated[
        float | None,
        Field(gt=0, description="null (the cost of the uniform quant.weight.group_size plan) or a number > 0"),
    ]
    fitness: _choice(Fitness)
    population: Count
    top_k: Count
    mutations: NonNegative
    mutation_prob: Annotated[float, Field(ge=0, le=1)]
    crossovers: NonNegative
    generations: NonNegative
    seed: NonNegative
    num_images: Annotated[
        int, Field(ge=2, le=MAX_IMAGES, description=f"an integer from 2 to {MAX_IMAGES} (FID needs two images)")
    ]
    steps: Steps
    scheduler: _choice(Scheduler)
    guidance_scale: Guidance
    image_seed: ImageSeed
    batch_size: Count


class SampleConfig(Section):
    num_images: ImageCount
    steps: Steps
    scheduler: _choice(Scheduler)
    guidance_scale: Guidance
    seed: ImageSeed
    batch_size: Count
    grid_size: Count
    compile: _choice(Compile)


class EvaluateConfig(Section):
    reference: Name
    features: _choice(Features)
    inception_weights: str | None
    batch_size: Count
    nearest_k: Count
    kid_subsets: Count
    kid_subset_size: Count


class TrainerConfig(Section):
    accelerator: _choice(Accelerator)
    devices: Annotated[
        Literal["auto"] | int, AfterValidator(_devices), Field(description="'auto', -1 (all) or an integer >= 1")
    ]
    strategy: _choice(Strategy)
    precision: _choice(Precision)


class TrackingConfig(Section):
    enabled: bool
    uri: Name
    experiment: Name
    sweep: str | None  # set by stages.sweep: tag qdit.sweep on every run of a sweep


class SweepConfig(Section):
    name: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.]*$",
            description="letters, digits, '_' and '.' (it prefixes DVC experiment names)",
        ),
    ]
    bits: Annotated[list[BitSetting], Field(description=BITS_TEXT)]
    methods: Annotated[
        list[Annotated[str, AfterValidator(_sweep_method)]],
        Field(min_length=1, description=SWEEP_METHODS_TEXT),
    ]
    ablation_bits: Annotated[list[BitSetting], Field(description=BITS_TEXT)]
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=1000)]],
        Field(min_length=1),
        AfterValidator(_distinct),
        Field(description="distinct integers from 0 to 1000"),
    ]
    jobs: Count

    @model_validator(mode="after")
    def _some_bits(self):
        if not self.bits and not self.ablation_bits:
            raise _refuse("sweep.bits", [], "one or more bit settings (here or in sweep.ablation_bits)")
        return self


class Params(Section):
    model: ModelConfig
    calibrate: CalibrateConfig
    stats: StatsConfig
    quant: QuantConfig
    search: SearchConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    sweep: SweepConfig

    @model_validator(mode="after")
    def _across_sections(self):
        """Keys that each look fine alone: what can be known without the model."""
        q, sr, tr = self.quant, self.search, self.trainer
        grouped = q.method == Method.QDIT and q.weight.bits != FP_BITS and q.plan is None
        if grouped and self.model.source == "tiny":
            # every quantized linear of the embedded DiT reads the hidden size or 4x it
            hidden = self.model.tiny.num_heads * self.model.tiny.head_dim
            divisors = ", ".join(str(d) for d in range(1, hidden + 1) if hidden % d == 0)
            for key, g in (
                ("quant.weight.group_size", q.weight.group_size),
                ("quant.act.group_size", q.act.group_size),
            ):
                if g is not None and hidden % g:
                    raise _refuse(
                        key,
                        g,
                        f"a divisor of the embedded DiT's hidden size {hidden} "
                        f"(model.tiny.num_heads x head_dim): {divisors}",
                    )
        if grouped and sr.enabled and q.weight.group_size not in sr.group_sizes:
            raise _refuse(
                "search.group_sizes",
                sr.group_sizes,
                f"a list that includes quant.weight.group_size = {q.weight.group_size} (the search "
                "starts from that uniform plan)",
            )
        if isinstance(tr.devices, int) and tr.devices > 1:
            counts = {"calibrate.num_samples": self.calibrate.num_samples, "sample.num_images": self.sample.num_images}
            if sr.enabled and sr.fitness != Fitness.MSE:
                counts["search.num_images"] = sr.num_images
            for key, n in counts.items():
                if n < tr.devices:
                    raise _refuse(key, n, f"at least trainer.devices = {tr.devices} (every device needs one item)")
        return self


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """params.yaml (with `key=value` overrides, values in YAML) checked against the schema;
    UserError naming the first bad key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter file not found (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        _override(data, item, path)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{path}: {_message(e.errors()[0], data)}") from None


def _override(data: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"{path}: override {item!r}; expected key=value, e.g. sample.steps=100")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node
    if not isinstance(node, dict):
        raise UserError(f"{path}: override {item!r}: {'.'.join(parents)} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[leaf] = text


def _locate(loc: tuple) -> tuple[list[str], type[BaseModel], Any]:
    """The schema keys an error's location names (pydantic appends union members and list
    indices, which are not keys), the section holding the last one, and its field."""
    keys: list[str] = []
    model: type[BaseModel] = Params
    field = None
    for part in loc:
        if field is not None or not isinstance(part, str) or part not in model.model_fields:
            break
        keys.append(part)
        ann = model.model_fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            field = model.model_fields[part]
    return keys, model, field


def _message(err: dict, data: dict) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "not_allowed":
        c = err["ctx"]
        return f"{c['key']} = {c['value']!r} is not allowed; allowed: {c['allowed']}"
    keys, model, field = _locate(loc)
    if kind == "extra_forbidden":
        full = ".".join(keys + [str(loc[len(keys)])])
        allowed = sorted(model.model_fields)
        hint = difflib.get_close_matches(str(loc[len(keys)]), allowed, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        where = f"section '{'.'.join(keys)}'" if keys else "the top level"
        return f"unknown key '{full}'{did_you_mean}; allowed in {where}: {', '.join(allowed)}"
    key = ".".join(keys)
    if kind == "missing":
        return f"missing key '{key}'; every key of the schema must be set (see the project's params.yaml)"
    value = data
    for part in keys:
        value = value[part]
    rest = loc[len(keys) :]
    if rest and isinstance(rest[0], int) and isinstance(value, list):
        value = value[rest[0]]  # the list element at fault
    allowed = _allowed(field) if field is not None else _describe(model)
    return f"{key} = {value!r} is not allowed; allowed: {allowed}"


def _describe(model: type[BaseModel]) -> str:
    return f"a mapping of {', '.join(model.model_fields)}"


def _allowed(field) -> str:
    """What a field takes, in words: its description, else read off its type and bounds."""
    if field.description:
        return field.description
    return _type_words(
        field.annotation, {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    )


def _type_words(ann, bounds: dict) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return "null or " + _type_words(rest[0], bounds) if len(rest) == 1 else "one of several types"
    if origin is Annotated:
        return _type_words(args[0], bounds)
    if origin is Literal:
        return ", ".join(str(a) for a in args)
    if origin is list:
        inner = _type_words(args[0], {})
        for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
            if inner.startswith(one):
                return "a list of " + many + inner[len(one) :]
        return "a list of values from: " + inner
    if isinstance(ann, type) and issubclass(ann, Enum):
        return ", ".join(m.value for m in ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _describe(ann)
    if ann is bool:
        return "true or false"
    if ann is str:
        return "a string"
    word = "an integer" if ann is int else "a number"
    lo = ("ge", ">=") if "ge" in bounds else ("gt", ">") if "gt" in bounds else None
    hi = ("le", "<=") if "le" in bounds else ("lt", "<") if "lt" in bounds else None
    if lo and hi:
        if ann is int and lo[0] == "ge" and hi[0] == "le":
            return f"{word} from {bounds['ge']} to {bounds['le']}"
        return f"{bounds[lo[0]]} {'<=' if lo[0] == 'ge' else '<'} value {hi[1]} {bounds[hi[0]]}"
    if lo or hi:
        op, sign = lo or hi
        return f"{word} {sign} {bounds[op]}"
    return word


def select(cfg: BaseModel, key: str) -> Any:
    """The value of a dotted key ('quant.weight.bits'); a section as a plain dict."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node.model_dump() if isinstance(node, BaseModel) else node


def section(cfg: Params, name: str) -> dict:
    """A plain dict of one section, for logging."""
    return getattr(cfg, name).model_dump()


def flat(cfg: Params, names: list[str]) -> dict[str, Any]:
    """Dotted keys of the named sections: what MLflow records as params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = node

    for name in names:
        walk(name, section(cfg, name))
    return out
