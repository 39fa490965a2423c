"""The allowed values of every choice, defined once. Torch-free: the params schema
(pipeline/config.py) and the libraries (pipeline/quant, pipeline/search, ...) both import it.

Each enum's values are the strings params.yaml and plan files use; `values(Enum)` lists them
in order, for messages.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """An enum whose members are their own string values ("qdit" == Method.QDIT)."""

    def __str__(self) -> str:
        return self.value


def values(choice: type[Choice]) -> tuple[str, ...]:
    return tuple(m.value for m in choice)


class Method(Choice):
    """Quantization recipe."""

    NONE = "none"  # floating point
    RTN = "rtn"  # per-channel weights, static per-tensor activations: the paper's baseline
    QDIT = "qdit"  # group-wise weights, dynamic group-wise activations
    SMOOTHQUANT = "smoothquant"  # smoothing, per-channel weights, static per-tensor activations
    PTQ4DIT = "ptq4dit"  # salience balancing + Spearman calibration, folded; as smoothquant's quantizers
    REPQ = "repq"  # RepQ-ViT: per-channel post-adaLN activations re-parameterised to per-tensor
    SVDQUANT = "svdquant"  # smoothing + a 16-bit low-rank branch, group-wise W and dynamic A


class Salience(Choice):
    """How smoothing measures an activation channel's range (pipeline/quant/transform.py)."""

    MAX = "max"  # SmoothQuant: the largest over all timesteps
    SPEARMAN = "spearman"  # PTQ4DiT: timesteps weighted by their complementarity with the weights


class Softmax(Choice):
    """The quantizer of the attention probabilities, when quant.attn_bits < 16."""

    UNIFORM = "uniform"  # dynamic min-max, per row
    LOG2 = "log2"  # RepQ-ViT: 2^-k levels, exact for 1 and fine near 0


class GranularityKind(Choice):
    """Which weights share one scale and zero point."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


class ActMode(Choice):
    """How a linear's input is quantized (see pipeline/quant/activation.py)."""

    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"
    STATIC_TIMESTEP = "static_timestep"


class Backend(Choice):
    """How a quantized linear computes (see pipeline/quant/backends.py)."""

    FAKE = "fake"
    INT8 = "int8"
    FP8 = "fp8"
    INT4 = "int4"


class Scheduler(Choice):
    DDIM = "ddim"
    DDPM = "ddpm"
    DPM_SOLVER = "dpm_solver"


class Compile(Choice):
    """`torch.compile` of the transformer while sampling (pipeline/models/compile.py)."""

    EAGER = "eager"  # not compiled
    DEFAULT = "default"  # inductor: fused elementwise work, no CUDA graphs
    REDUCE_OVERHEAD = "reduce-overhead"  # + CUDA graphs (GPU): less launch overhead at small batches
    MAX_AUTOTUNE = "max-autotune"  # + GEMM/kernel autotuning and CUDA graphs; slowest to compile


class Fitness(Choice):
    """What the granularity search minimises (see pipeline/search/fitness.py)."""

    MSE = "mse"
    SAMPLE_MSE = "sample_mse"
    FID_FP = "fid_fp"
    FID = "fid"


class BudgetMetric(Choice):
    BITOPS = "bitops"  # GBOPs per image per denoiser forward
    SIZE = "size"  # MB of the quantized layers


class Features(Choice):
    """The feature network behind FID and friends."""

    AUTO = "auto"
    DIGITS = "digits"
    INCEPTION = "inception"


class SweepMethod(Choice):
    """A sweep's methods (see pipeline/ablation.py): the steps of the paper's ablation, then
    the peers; `+gptq`, `+smooth` and `+lowrank` (SweepOption) combine with any of them, and
    `+dynamic` with the per-channel ones."""

    RTN = "rtn"
    GROUPS = "groups"
    DYNAMIC = "dynamic"
    QDIT = "qdit"
    SMOOTHQUANT = "smoothquant"
    PTQ4DIT = "ptq4dit"
    REPQ = "repq"
    SVDQUANT = "svdquant"


class SweepOption(Choice):
    DYNAMIC = "dynamic"  # quant.act.mode = dynamic, on a per-channel method (per-token activations)
    GPTQ = "gptq"  # quant.weight.gptq = true
    SMOOTH = "smooth"  # quant.smooth.alpha = 0.5
    LOWRANK = "lowrank"  # quant.lowrank.rank = 32


class Accelerator(Choice):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"
    CUDA = "cuda"
    MPS = "mps"


class Strategy(Choice):
    AUTO = "auto"
    DDP = "ddp"  # not ddp_spawn: it would pickle the models and their hooks


class Precision(Choice):
    FP32 = "32-true"
    BF16 = "bf16-true"
    FP16 = "16-true"
    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "16-mixed"
    FP64 = "64-true"


SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
FP_BITS = 16  # "not quantized"

# torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so image seeds are
# packed into 32 bits: 12 for the base seed, 20 for the image index (pipeline/seeds.py).
MAX_BASE_SEED = 2**12 - 1
MAX_IMAGES = 2**20
