"""The sweep's results as the paper's table: one row per (bit setting, method), mean and spread
over seeds, with the FP model on top. Pure: records in, Markdown out (stages/report.py reads
the DVC experiments, pipeline/plots.py draws the figures)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.ablation import METHODS, bits_label, is_ours, method_label, method_of, split_method

# (metric key, column header, decimals); the FP row reads `<key>_fp_model`
COLUMNS = [
    ("size_mb", "Size (MB)", 2),
    ("gbitops", "GBOPs", 3),
    ("fid", "FID ↓", 2),
    ("sfid", "sFID ↓", 2),
    ("is", "IS ↑", 2),
    ("precision", "Precision ↑", 3),
    ("recall", "Recall ↑", 3),
    ("fid_fp", "FID to FP ↓", 3),
    ("psnr_fp", "PSNR to FP (dB) ↑", 1),
]
FP = "fp"


@dataclass
class Record:
    """One experiment: its setting and its metrics.json."""

    name: str
    bits: str
    method: str
    seed: int
    metrics: dict[str, float | None] = field(default_factory=dict)


def record_from_params(name: str, params: dict, metrics: dict) -> Record:
    """From an experiment's dotted params and its metrics; the seed index is sample.seed / 3."""
    bits = bits_label(int(params["quant.weight.bits"]), int(params["quant.act.bits"]))
    # `dvc exp show` writes a missing (null) metric as the string 'None': keep numbers only
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Record(name, bits, method_of(params), int(params["sample.seed"]) // 3, numbers)


@dataclass
class Row:
    bits: str
    method: str
    values: dict[str, list[float]]

    @property
    def label(self) -> str:
        return "FP" if self.method == FP else method_label(self.method)


def rows(records: list[Record], bits_order: list[str] | None = None) -> list[Row]:
    """The FP row (its metrics from every seed, once per seed), then each (bits, method) with
    the values of all its seeds, in `bits_order` and the ablation's method order."""
    fp: dict[str, list[float]] = {}
    seen: set[int] = set()
    for r in sorted(records, key=lambda r: r.seed):
        if r.seed in seen:
            continue
        seen.add(r.seed)
        for key, _, _ in COLUMNS:
            v = r.metrics.get("fp16_size_mb" if key == "size_mb" else f"{key}_fp_model")
            if v is not None:
                fp.setdefault(key, []).append(float(v))
    out = [Row("W16A16", FP, fp)] if records else []
    order = list(dict.fromkeys(bits_order or [])) + sorted({r.bits for r in records} - set(bits_order or []))
    for bits in order:
        # the ablation's and the peers' order, each method before its options
        order = sorted({r.method for r in records}, key=lambda m: (METHODS.index(split_method(m)[0]), m))
        for method in order:
            group = [r for r in records if r.bits == bits and r.method == method]
            if group:
                out.append(
                    Row(
                        bits,
                        method,
                        {
                            key: [float(r.metrics[key]) for r in group if r.metrics.get(key) is not None]
                            for key, _, _ in COLUMNS
                        },
                    )
                )
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def cell(values: list[float], decimals: int) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    if math.isinf(mean):
        return "-"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if len(values) > 1 else f"{mean:.{decimals}f}"


def _mean(by_seed: dict[int, dict], key: str) -> float | None:
    values = [float(m[key]) for m in by_seed.values() if m.get(key) is not None]
    return mean_std(values)[0] if values else None


def _within(ours: dict[int, dict], peer: dict[int, dict]) -> bool:
    """Whether our configuration's mean size_mb and gbitops are no more than the peer's."""
    for key in ("size_mb", "gbitops"):
        a, b = _mean(ours, key), _mean(peer, key)
        if a is not None and b is not None and a > b * (1 + 1e-9):
            return False
    return True


def paired_lead(records: list[Record], keys=(("fid_fp", "FID to FP", 3), ("psnr_fp", "PSNR to FP (dB)", 2))) -> str:
    """Per bit setting and per peer: our best configuration (lowest mean FID to FP) among those
    no larger and no costlier than the peer (mean size_mb and gbitops, where recorded), minus
    the peer, paired by seed (mean ± sample std of the per-seed differences), as Markdown lines.
    A peer that none of ours matches in size and cost gets a line saying so."""
    lines = []
    for bits in dict.fromkeys(r.bits for r in records):
        by: dict[str, dict[int, dict]] = {}
        for r in records:
            if r.bits == bits and r.metrics.get("fid_fp") is not None:
                by.setdefault(r.method, {})[r.seed] = r.metrics
        ours = [m for m in by if is_ours(m)]
        peers = sorted((m for m in by if m not in ours), key=lambda m: _mean(by[m], "fid_fp"))
        for peer in peers if ours else []:
            fits = [m for m in ours if _within(by[m], by[peer])]
            if not fits:
                lines.append(f"- {bits}: none of ours is within the size and GBOPs of {method_label(peer)}")
                continue
            a = min(fits, key=lambda m: _mean(by[m], "fid_fp"))
            seeds = sorted(set(by[a]) & set(by[peer]))
            parts = []
            for key, name, d in keys:
                diffs = [float(by[a][s][key]) - float(by[peer][s][key]) for s in seeds if by[a][s].get(key) is not None]
                if diffs:
                    mean, std = mean_std(diffs)
                    parts.append(f"{name} {mean:+.{d}f} ± {std:.{d}f}")
            lines.append(
                f"- {bits}: {method_label(a)} minus {method_label(peer)}, {len(seeds)} paired seeds: "
                + ", ".join(parts)
            )
    return "\n".join(lines)


def markdown_table(table: list[Row]) -> str:
    head = "| W/A | Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |"
    lines = [head, sep]
    for row in table:
        cells = [cell(row.values.get(key, []), d) for key, _, d in COLUMNS]
        lines.append(f"| {row.bits} | {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
