"""Typed schema of params.yaml, loaded with omegaconf and validated with one clear message.

Each stage reads only its own section (plus `trainer` and `tracking`), but validates the whole
file at start so a typo anywhere is caught before hours of work. Defaults are the embedded
digits DiT; the paper's protocol for DiT-XL/2 is given in the comments of params.yaml.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from pipeline.ablation import METHODS as ABLATION_METHODS
from pipeline.ablation import parse_bits
from pipeline.errors import UserError, first_line
from pipeline.quant.activation import ACT_MODES
from pipeline.quant.backends import BACKENDS
from pipeline.quant.plan import METHODS
from pipeline.quant.quantizer import SUPPORTED_BITS
from pipeline.quant.targets import DEFAULT_INCLUDE
from pipeline.search.evolution import EvolutionParams
from pipeline.seeds import MAX_BASE_SEED, MAX_IMAGES

SCHEDULERS = ("ddim", "ddpm", "dpm_solver")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")  # ddp_spawn would pickle the models and their hooks
PRECISIONS = ("32-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed", "64-true")
FEATURES = ("auto", "digits", "inception")
FITNESSES = ("mse", "sample_mse", "fid_fp", "fid")  # see pipeline/search/fitness.py
BUDGET_METRICS = ("bitops", "size")


@dataclass
class TinyDiTConfig:
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    patch_size: int = 2
    train_steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    class_dropout: float = 0.1


@dataclass
class ClassifierConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    holdout: float = 0.2


@dataclass
class ModelConfig:
    source: str = "tiny"
    seed: int = 0
    tiny: TinyDiTConfig = field(default_factory=TinyDiTConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass
class CalibrateConfig:
    num_samples: int = 256
    steps: int = 50
    scheduler: str = "ddim"
    guidance_scale: float = 1.0
    seed: int = 1
    batch_size: int = 64
    shard_size: int = 1000


@dataclass
class StatsConfig:
    batch_size: int = 64
    top_channels: int = 8


@dataclass
class WeightQuantConfig:
    bits: int = 4
    group_size: int = 32
    symmetric: bool = False
    clip_search: bool = True
    gptq: bool = False


@dataclass
class ActQuantConfig:
    bits: int = 8
    mode: str = "auto"
    group_size: int | None = None
    symmetric: bool = False


@dataclass
class GPTQConfig:
    block_size: int = 128
    damp: float = 0.01
    batch_size: int = 64


@dataclass
class QuantConfig:
    method: str = "qdit"
    weight: WeightQuantConfig = field(default_factory=WeightQuantConfig)
    act: ActQuantConfig = field(default_factory=ActQuantConfig)
    attn_bits: int = 16
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=list)
    plan: str | None = None
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    backend: str = "fake"


@dataclass
class SearchConfig(EvolutionParams):
    enabled: bool = True
    group_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    budget_metric: str = "bitops"
    budget: float | None = None
    fitness: str = "sample_mse"
    num_images: int = 64
    steps: int = 10
    scheduler: str = "ddim"
    guidance_scale: float = 1.0
    image_seed: int = 2
    batch_size: int = 250


@dataclass
class SampleConfig:
    num_images: int = 1000
    steps: int = 50
    scheduler: str = "ddim"
    guidance_scale: float = 1.0
    seed: int = 0
    batch_size: int = 250
    grid_size: int = 10


@dataclass
class EvaluateConfig:
    reference: str = "digits"
    features: str = "auto"
    inception_weights: str | None = None
    batch_size: int = 500
    nearest_k: int = 3  # precision/recall manifolds
    kid_subsets: int = 100
    kid_subset_size: int = 1000


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str = "32-true"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "qdit"
    sweep: str | None = None  # set by stages.sweep: tag qdit.sweep on every run of a sweep


@dataclass
class SweepConfig:
    name: str = "sweep"
    bits: list[str] = field(default_factory=lambda: ["W8A8", "W6A8", "W4A16", "W4A8", "W4A4"])
    methods: list[str] = field(default_factory=lambda: ["rtn", "qdit"])
    ablation_bits: list[str] = field(default_factory=lambda: ["W4A8", "W4A4"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    jobs: int = 2


@dataclass
class Params:
    model: ModelConfig = field(default_factory=ModelConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> DictConfig:
    """Load params.yaml over the schema; raise UserError naming the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter file not found (run from the project root)")
    try:
        user = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors come in many types
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(user, DictConfig):
        raise UserError(f"{path}: expected a mapping of sections, got {type(user).__name__}")
    layers = [user] + ([OmegaConf.from_dotlist(overrides)] if overrides else [])
    schema = OmegaConf.structured(Params)
    for layer in layers:
        _check_containers(schema, layer, path)
    try:
        cfg = OmegaConf.merge(schema, *layers)
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(path, e)) from None
    except ValidationError as e:
        raise UserError(f"{path}: {e.full_key}: {first_line(e)}") from None
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {getattr(e, 'full_key', '')}: {first_line(e)}") from None
    validate(cfg, path)
    return cfg


def _check_containers(schema: DictConfig, user: DictConfig, path: Path, prefix: str = "") -> None:
    """A mapping where the schema has a list or a single value, or the reverse: OmegaConf's own
    error for this does not always say which key, so find it first."""

    def kind(node) -> str:
        return "a mapping" if OmegaConf.is_dict(node) else "a list" if OmegaConf.is_list(node) else "a single value"

    for key in user:
        if key not in schema:
            continue  # the merge reports unknown keys, with suggestions
        want, got = schema._get_node(key), user._get_node(key)
        full = f"{prefix}{key}"
        if kind(want) != kind(got) and not got._is_none() and not _accepts_any(schema, key):
            raise UserError(f"{path}: {full}: expected {kind(want)}, got {kind(got)}")
        if OmegaConf.is_dict(want) and OmegaConf.is_dict(got):
            _check_containers(want, got, path, full + ".")


def _accepts_any(schema: DictConfig, key: str) -> bool:
    """Keys typed Any (e.g. trainer.devices) take any value here; validate() judges them."""
    return schema._get_node(key)._metadata.ref_type is Any


def _unknown_key_message(path: Path, e: ConfigKeyError) -> str:
    full_key = e.full_key or ""
    parent, _, key = full_key.rpartition(".")
    node = OmegaConf.structured(Params)
    for part in parent.split(".") if parent else []:
        node = node[part]
    allowed = sorted(node.keys())
    hint = difflib.get_close_matches(key, allowed, n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
    where = f"section '{parent}'" if parent else "the top level"
    return f"{path}: unknown key '{full_key}'{did_you_mean}; allowed in {where}: {', '.join(allowed)}"


def _require(ok: bool, path: Path, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{path}: {key} = {value!r} is not allowed; allowed: {allowed}")


def _positive_ints(cfg: DictConfig, path: Path, keys: list[str]) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        _require(value >= 1, path, key, value, "an integer >= 1")


def validate(cfg: DictConfig, path: Path = Path("params.yaml")) -> None:
    """Value checks that the types alone do not express."""
    _positive_ints(
        cfg,
        path,
        [
            "model.tiny.num_layers",
            "model.tiny.num_heads",
            "model.tiny.head_dim",
            "model.tiny.patch_size",
            "model.tiny.train_steps",
            "model.tiny.batch_size",
            "model.classifier.epochs",
            "model.classifier.batch_size",
            "calibrate.num_samples",
            "calibrate.steps",
            "calibrate.batch_size",
            "calibrate.shard_size",
            "stats.batch_size",
            "stats.top_channels",
            "sample.num_images",
            "sample.steps",
            "sample.batch_size",
            "sample.grid_size",
            "search.population",
            "search.top_k",
            "search.steps",
            "search.batch_size",
            "evaluate.batch_size",
            "evaluate.nearest_k",
            "evaluate.kid_subsets",
            "evaluate.kid_subset_size",
            "sweep.jobs",
        ],
    )
    tiny = cfg.model.tiny
    _require(
        8 % tiny.patch_size == 0,
        path,
        "model.tiny.patch_size",
        tiny.patch_size,
        "a divisor of the 8x8 digit images: 1, 2, 4 or 8",
    )
    _require(0 <= tiny.warmup_steps, path, "model.tiny.warmup_steps", tiny.warmup_steps, "an integer >= 0")
    _require(0.0 <= tiny.ema_decay < 1.0, path, "model.tiny.ema_decay", tiny.ema_decay, "0 <= value < 1")
    _require(
        0.0 < tiny.class_dropout < 1.0,
        path,
        "model.tiny.class_dropout",
        tiny.class_dropout,
        "0 < value < 1 (the null label is learnt from these drops)",
    )
    for key in ("model.tiny.learning_rate", "model.classifier.learning_rate"):
        value = OmegaConf.select(cfg, key)
        _require(value > 0, path, key, value, "a number > 0")
    hold = cfg.model.classifier.holdout
    _require(0.0 < hold < 0.5, path, "model.classifier.holdout", hold, "0 < value < 0.5")
    _require(
        bool(cfg.model.source.strip()),
        path,
        "model.source",
        cfg.model.source,
        "'tiny', a local diffusers DiT directory, or a Hugging Face Hub id",
    )
    for section in ("calibrate", "sample", "search"):
        sched = cfg[section].scheduler
        _require(sched in SCHEDULERS, path, f"{section}.scheduler", sched, ", ".join(SCHEDULERS))
        steps = cfg[section].steps
        _require(steps <= 1000, path, f"{section}.steps", steps, "1 to 1000 (the training timesteps)")
        scale = cfg[section].guidance_scale
        _require(
            scale >= 1.0,
            path,
            f"{section}.guidance_scale",
            scale,
            "a number >= 1.0 (1.0 = no classifier-free guidance)",
        )
    for key in ("calibrate.seed", "sample.seed", "search.image_seed"):
        value = OmegaConf.select(cfg, key)
        _require(0 <= value <= MAX_BASE_SEED, path, key, value, f"0 to {MAX_BASE_SEED} (image seeds are 32-bit)")
    for key in ("calibrate.num_samples", "sample.num_images"):
        value = OmegaConf.select(cfg, key)
        _require(value <= MAX_IMAGES, path, key, value, f"1 to {MAX_IMAGES}")
    q = cfg.quant
    _require(q.method in METHODS, path, "quant.method", q.method, ", ".join(METHODS))
    _require(q.backend in BACKENDS, path, "quant.backend", q.backend, ", ".join(BACKENDS))
    bits_ok = "2 to 8, or 16 (not quantized)"
    for key in ("quant.weight.bits", "quant.act.bits", "quant.attn_bits"):
        value = OmegaConf.select(cfg, key)
        _require(value in SUPPORTED_BITS or value == 16, path, key, value, bits_ok)
    _require(q.weight.group_size >= 1, path, "quant.weight.group_size", q.weight.group_size, "an integer >= 1")
    _require(
        q.act.group_size is None or q.act.group_size >= 1,
        path,
        "quant.act.group_size",
        q.act.group_size,
        "null (the weights' group size) or an integer >= 1",
    )
    modes = ("auto",) + tuple(m for m in ACT_MODES if m != "none")
    _require(q.act.mode in modes, path, "quant.act.mode", q.act.mode, ", ".join(modes))
    _require(len(q.include) > 0, path, "quant.include", list(q.include), "one or more module-name patterns")
    _require(
        not (q.weight.gptq and q.weight.bits == 16),
        path,
        "quant.weight.gptq",
        q.weight.gptq,
        "false when quant.weight.bits is 16 (nothing to round)",
    )
    _require(0 < q.gptq.damp < 1, path, "quant.gptq.damp", q.gptq.damp, "0 < value < 1")
    _positive_ints(cfg, path, ["quant.gptq.block_size", "quant.gptq.batch_size"])
    sr = cfg.search
    _require(sr.fitness in FITNESSES, path, "search.fitness", sr.fitness, ", ".join(FITNESSES))
    _require(
        sr.budget_metric in BUDGET_METRICS,
        path,
        "search.budget_metric",
        sr.budget_metric,
        "bitops (GBOPs per image per denoiser forward) or size (MB of the quantized layers)",
    )
    _require(
        sr.budget is None or sr.budget > 0,
        path,
        "search.budget",
        sr.budget,
        "null (the cost of the uniform quant.weight.group_size plan) or a number > 0",
    )
    _require(
        len(sr.group_sizes) > 0 and all(g >= 1 for g in sr.group_sizes),
        path,
        "search.group_sizes",
        list(sr.group_sizes),
        "a non-empty list of integers >= 1",
    )
    _require(0.0 <= sr.mutation_prob <= 1.0, path, "search.mutation_prob", sr.mutation_prob, "0 <= value <= 1")
    for key in ("search.mutations", "search.crossovers", "search.generations", "search.seed"):
        value = OmegaConf.select(cfg, key)
        _require(value >= 0, path, key, value, "an integer >= 0")
    _require(sr.num_images >= 2, path, "search.num_images", sr.num_images, "an integer >= 2 (FID needs two images)")
    _require(sr.num_images <= MAX_IMAGES, path, "search.num_images", sr.num_images, f"2 to {MAX_IMAGES}")
    feats = cfg.evaluate.features
    _require(feats in FEATURES, path, "evaluate.features", feats, ", ".join(FEATURES))
    tr = cfg.trainer
    _require(tr.accelerator in ACCELERATORS, path, "trainer.accelerator", tr.accelerator, ", ".join(ACCELERATORS))
    _require(tr.strategy in STRATEGIES, path, "trainer.strategy", tr.strategy, ", ".join(STRATEGIES))
    _require(tr.precision in PRECISIONS, path, "trainer.precision", tr.precision, ", ".join(PRECISIONS))
    devices = tr.devices
    ok = devices == "auto" or (
        isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
    )
    _require(ok, path, "trainer.devices", devices, "'auto', -1 (all) or an integer >= 1")
    _require(
        bool(cfg.tracking.experiment.strip()), path, "tracking.experiment", cfg.tracking.experiment, "a non-empty name"
    )
    _validate_sweep(cfg.sweep, path)
    _validate_across_sections(cfg, path)


def _validate_across_sections(cfg: DictConfig, path: Path) -> None:
    """Checks between keys that each look fine alone: what can be known without the model."""
    q, sr, tr = cfg.quant, cfg.search, cfg.trainer
    grouped = q.method == "qdit" and q.weight.bits != 16 and q.plan is None
    if grouped and cfg.model.source == "tiny":
        # every quantized linear of the embedded DiT reads the hidden size or 4x it
        hidden = cfg.model.tiny.num_heads * cfg.model.tiny.head_dim
        divisors = ", ".join(str(d) for d in range(1, hidden + 1) if hidden % d == 0)
        for key in ("quant.weight.group_size", "quant.act.group_size"):
            g = OmegaConf.select(cfg, key)
            _require(
                g is None or hidden % g == 0,
                path,
                key,
                g,
                f"a divisor of the embedded DiT's hidden size {hidden} (model.tiny.num_heads x head_dim): {divisors}",
            )
    if grouped and sr.enabled:
        _require(
            q.weight.group_size in sr.group_sizes,
            path,
            "search.group_sizes",
            list(sr.group_sizes),
            f"a list that includes quant.weight.group_size = {q.weight.group_size} (the search starts "
            "from that uniform plan)",
        )
    if isinstance(tr.devices, int) and tr.devices > 1:
        counts = ["calibrate.num_samples", "sample.num_images"] + (
            ["search.num_images"] if sr.enabled and sr.fitness != "mse" else []
        )
        for key in counts:
            n = OmegaConf.select(cfg, key)
            _require(
                n >= tr.devices, path, key, n, f"at least trainer.devices = {tr.devices} (every device needs one item)"
            )


def _validate_sweep(sw: DictConfig, path: Path) -> None:
    _require(
        bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", sw.name)),
        path,
        "sweep.name",
        sw.name,
        "letters, digits, '_' and '.' (it prefixes DVC experiment names)",
    )
    for key, values in (("sweep.bits", sw.bits), ("sweep.ablation_bits", sw.ablation_bits)):
        for b in values:
            try:
                w, a = parse_bits(b)
            except ValueError as e:
                raise UserError(f"{path}: {key}: {e}") from None
            ok = w in SUPPORTED_BITS and (a in SUPPORTED_BITS or a == 16)
            _require(ok, path, key, b, "W<w>A<a> with w from 2 to 8 and a from 2 to 8 or 16, e.g. W4A8")
    _require(
        len(sw.bits) + len(sw.ablation_bits) > 0,
        path,
        "sweep.bits",
        list(sw.bits),
        "one or more bit settings (here or in sweep.ablation_bits)",
    )
    _require(
        len(sw.methods) > 0 and all(m in ABLATION_METHODS for m in sw.methods),
        path,
        "sweep.methods",
        list(sw.methods),
        ", ".join(ABLATION_METHODS),
    )
    _require(
        len(sw.seeds) > 0 and all(0 <= s <= 1000 for s in sw.seeds) and len(set(sw.seeds)) == len(sw.seeds),
        path,
        "sweep.seeds",
        list(sw.seeds),
        "distinct integers from 0 to 1000",
    )


def section(cfg: DictConfig, name: str) -> dict:
    """A plain dict of one section, for logging."""
    return OmegaConf.to_container(cfg[name], resolve=True)


def flat(cfg: DictConfig, names: list[str]) -> dict[str, Any]:
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
