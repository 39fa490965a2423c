"""Per-channel input transforms before quantization: smoothing (SmoothQuant, PTQ4DiT, SVDQuant)
and RepQ-ViT's re-parameterisation, folded into the model wherever that is exact.

A transform of a linear's input x [.., C] is x' = (x - shift) / scale, per input channel j. The
linear compensates exactly: W x + b = (W diag(scale)) x' + (b + W shift). The division is
absorbed by whatever produces x, where it can be:

  modulation  adaLN-Zero: x = LN(h) * (1 + m_scale) + m_shift with m_scale, m_shift rows of the
              modulation linear, so x' needs those rows divided by `scale` (and the "1 +" becomes
              "1/scale - 1" in the bias, the shift lands in the shift rows' bias);
  value       attention output o = P v with rows of P summing to 1, so o' = P v' with
              v' = (v - shift) / scale: the value projection's rows take it;
  explicit    anything else (the input of fc2, after GELU): the quantized layer divides its
              input at run time, a cost counted in cost.py.

Every transform here is exact in floating point: the transformed, unquantized model computes
what the original does (tested to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

EPS = 1e-5  # floor of saliences: a dead channel keeps scale 1, never 0 or inf


@dataclass
class InputTransform:
    scale: torch.Tensor  # [C], > 0
    shift: torch.Tensor | None = None  # [C]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(x.device, x.dtype)
        if self.shift is not None:
            x = x - self.shift.to(x.device, x.dtype)
        return x / s

    def range(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ranges [.., C] of x mapped to those of x' (scale > 0 keeps the order)."""
        shift = 0 if self.shift is None else self.shift
        return (lo - shift) / self.scale, (hi - shift) / self.scale


@dataclass(frozen=True)
class Site:
    """Linears that read the same input, and how a transform of that input is absorbed."""

    consumers: tuple[str, ...]
    kind: str  # "modulation" | "value" | "explicit"
    producer: str | None = None  # the linear whose output rows take the transform
    chunks: tuple[int, int] | None = None  # modulation: (shift chunk, scale chunk) of 6

    @property
    def folded(self) -> bool:
        return self.kind != "explicit"


def _adaln_zero_block(model: nn.Module, block: str) -> bool:
    try:
        b = model.get_submodule(block)
    except AttributeError:
        return False
    return getattr(b, "norm_type", None) == "ada_norm_zero" and hasattr(b.norm1, "linear")


def _plain_self_attention(attn: nn.Module) -> bool:
    """Attention whose output is P V with P's rows summing to 1 and nothing applied to V."""
    return (
        getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "group_norm", None) is None
        and not getattr(attn, "residual_connection", False)
        and not getattr(attn, "is_cross_attention", False)
    )


def find_sites(model: nn.Module, names: list[str]) -> list[Site]:
    """The sites of the given linears. Inside a diffusers DiT block with adaLN-Zero (DiT-XL/2,
    the embedded DiT): q/k/v and fc1 fold into the modulation, the attention output projection
    into the value projection; every other linear is its own explicit site."""
    sites: list[Site] = []
    done: set[str] = set()
    for name in names:
        if name in done:
            continue
        parts = name.split(".")
        block = ".".join(parts[:2])
        rest = ".".join(parts[2:])
        site = Site((name,), "explicit")
        if parts[0] == "transformer_blocks" and _adaln_zero_block(model, block):
            mod = f"{block}.norm1.linear"
            attn = model.get_submodule(f"{block}.attn1")
            if rest in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
                # all three read the same input: all take the transform, planned or not
                site = Site(tuple(f"{block}.attn1.{p}" for p in ("to_q", "to_k", "to_v")), "modulation", mod, (0, 1))
            elif rest == "ff.net.0.proj":
                site = Site((name,), "modulation", mod, (3, 4))
            elif rest == "attn1.to_out.0" and _plain_self_attention(attn):
                site = Site((name,), "value", f"{block}.attn1.to_v")
        sites.append(site)
        done.update(site.consumers)
    return sites


class TransformedLinear(nn.Linear):
    """A Linear that transforms its input first: an explicit site in the FP model, so the
    transformed, unquantized model stays exact until quantization replaces it."""

    def __init__(self, linear: nn.Linear, t: InputTransform):
        super().__init__(
            linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, linear.weight.dtype
        )
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.transform = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.transform.apply(x))


def _linear(model: nn.Module, name: str) -> nn.Linear:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fold(model: nn.Module, site: Site, t: InputTransform) -> None:
    """Apply `t` to the site's input inside the FP model, exactly: the consumers' weights take
    diag(scale) and their biases W shift; the producer's rows take the division, or (explicit
    sites) the consumer becomes a TransformedLinear that divides at run time."""
    device = _linear(model, site.consumers[0]).weight.device  # statistics live on the CPU
    scale = t.scale.double().to(device)
    shift = None if t.shift is None else t.shift.double().to(device)
    for name in site.consumers:
        lin = _linear(model, name)
        w = lin.weight.double()
        if shift is not None:
            if lin.bias is None:
                raise ValueError(f"{name}: a shifted input needs the layer's bias to compensate")
            lin.bias.copy_((lin.bias.double() + w @ shift).to(lin.bias.dtype))
        lin.weight.copy_((w * scale).to(lin.weight.dtype))
    if site.kind == "explicit":
        (name,) = site.consumers
        _set(model, name, TransformedLinear(_linear(model, name), t))
        return
    prod = _linear(model, site.producer)
    w, b = prod.weight.double(), prod.bias.double()
    if site.kind == "value":
        w = w / scale[:, None]
        b = b if shift is None else b - shift
        b = b / scale
    else:
        c = scale.numel()
        i_shift, i_scale = (slice(k * c, (k + 1) * c) for k in site.chunks)
        w[i_scale] = w[i_scale] / scale[:, None]
        b[i_scale] = (1 + b[i_scale]) / scale - 1
        w[i_shift] = w[i_shift] / scale[:, None]
        b[i_shift] = b[i_shift] if shift is None else b[i_shift] - shift
        b[i_shift] = b[i_shift] / scale
    prod.weight.copy_(w.to(prod.weight.dtype))
    prod.bias.copy_(b.to(prod.bias.dtype))


def weight_salience(weights: list[torch.Tensor]) -> torch.Tensor:
    """max |W_ij| over the output rows of every given weight [out, C]: [C]."""
    return torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0).cpu()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row of a [T, C] with b [C]: [T]."""
    from scipy.stats import spearmanr

    bn = b.double().numpy()
    return torch.tensor([spearmanr(row, bn).statistic for row in a.double().numpy()], dtype=torch.float64)


def act_salience(absmax: torch.Tensor, w_salience: torch.Tensor, calibrated: str) -> torch.Tensor:
    """Activation salience [C] from per-timestep abs-max [T, C] (timesteps that saw data).

    max       SmoothQuant: the largest over all timesteps.
    spearman  PTQ4DiT's Salience Calibration: timesteps weighted by softmax(-rho_t), rho_t the
              rank correlation of their activation salience with the weight salience, so the
              timesteps where the two are most complementary count most.
    """
    if calibrated == "max":
        return absmax.amax(0)
    rho = spearman(absmax, w_salience)
    eta = torch.softmax(-rho, 0).to(absmax.dtype)
    return (eta[:, None] * absmax).sum(0)


def smoothing(x_salience: torch.Tensor, w_salience: torch.Tensor, alpha: float) -> InputTransform:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): alpha of the activation range moves into the
    weights (SmoothQuant eq. 4; PTQ4DiT's balancing is alpha = 0.5)."""
    x = x_salience.double().clamp_min(EPS)
    w = w_salience.double().clamp_min(EPS)
    s = (x.pow(alpha) / w.pow(1 - alpha)).clamp_min(EPS)
    return InputTransform(s.float())


def repq(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> InputTransform:
    """RepQ-ViT's re-parameterisation of per-channel asymmetric quantization [lo_j, hi_j] at
    `bits` into one per-tensor scale and zero point: with s_j, z_j the channel's, s~ and z~ their
    means, x' = (x + s_j (z_j - z~)) / (s_j / s~) quantized per tensor is x quantized per channel."""
    levels = 2**bits - 1
    lo, hi = lo.double().clamp(max=0), hi.double().clamp(min=0)  # ranges include zero, as ours do
    s = ((hi - lo) / levels).clamp_min(EPS)
    z = torch.round(-lo / s)
    s_mean, z_mean = s.mean(), torch.round(z.mean())
    return InputTransform((s / s_mean).float(), (-s * (z - z_mean)).float())
