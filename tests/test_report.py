import pytest

from pipeline.report import Record, cell, markdown_table, mean_std, paired_lead, rows


def _rec(bits, method, seed, fid, fp_fid):
    return Record(
        f"x-{bits}-{method}-s{seed}",
        bits,
        method,
        seed,
        {
            "fid": fid,
            "fid_fp_model": fp_fid,
            "size_mb": 1.0,
            "fp16_size_mb": 3.0,
            "sfid": None,
            "precision": 0.5,
            "psnr_fp": 30.0 + seed,
        },
    )


def test_rows_average_over_seeds_with_fp_once_per_seed():
    recs = (
        [_rec("W4A8", "qdit", s, 5.0 + s, 4.0 + s) for s in range(3)]
        + [_rec("W4A8", "rtn", s, 8.0 + 2 * s, 4.0 + s) for s in range(3)]
        + [_rec("W8A8", "rtn", 0, 4.5, 4.0)]
    )
    table = rows(recs, ["W8A8", "W4A8"])
    assert [(r.bits, r.label) for r in table] == [
        ("W16A16", "FP"),
        ("W8A8", "RTN"),
        ("W4A8", "RTN"),
        ("W4A8", "Q-DiT (+ search)"),
    ]
    fp = table[0]
    assert fp.values["fid"] == [4.0, 5.0, 6.0] and fp.values["size_mb"] == [3.0, 3.0, 3.0]
    assert fp.values.get("psnr_fp", []) == []  # FP against itself: no fidelity column
    assert table[2].values["fid"] == [8.0, 10.0, 12.0] and table[2].values["sfid"] == []
    md = markdown_table(table)
    assert "| W4A8 | RTN | 1.00 ± 0.00 | - | 10.00 ± 2.00 | - |" in md  # no GBOPs recorded
    assert "| W8A8 | RTN | 1.00 | - | 4.50 | - |" in md  # one seed: no spread
    assert md.splitlines()[2].startswith("| W16A16 | FP | 3.00 ± 0.00 | - | 5.00 ± 1.00 |")


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
    assert cell([], 2) == "-" and cell([float("inf")] * 2, 1) == "-"
    assert cell([0.120, 0.130], 3) == "0.125 ± 0.007"
    with pytest.raises(ZeroDivisionError):
        mean_std([])


def test_record_from_an_exp_show_row():
    from pipeline.report import record_from_params

    row = {
        "quant.weight.bits": 4.0,
        "quant.act.bits": 8.0,
        "quant.method": "qdit",
        "quant.act.mode": "dynamic",
        "search.enabled": True,
        "sample.seed": 6.0,
        "fid": 7.5,
        "kid": "None",
        "precision": 0.7,
    }
    r = record_from_params("s-w4a8-qdit-s2", row, row)
    assert (r.bits, r.method, r.seed) == ("W4A8", "qdit", 2)
    assert r.metrics["fid"] == 7.5 and r.metrics["precision"] == 0.7 and "kid" not in r.metrics


def test_paired_lead_pairs_each_peer_with_our_best_at_no_more_size_and_cost():
    def rec(method, seed, fid_fp, psnr, size, gbops):
        metrics = {"fid_fp": fid_fp, "psnr_fp": psnr, "size_mb": size, "gbitops": gbops}
        return Record(f"x-{method}-s{seed}", "W4A4", method, seed, metrics)

    recs = (
        [rec("qdit", s, 0.5 + s, 35.0 + s, 1.7, 0.50) for s in range(3)]
        + [rec("qdit+gptq", s, 0.4 + s, 36.0, 1.7, 0.50) for s in range(3)]
        + [rec("qdit+gptq+lowrank", s, 0.2 + s, 37.0 + 2 * s, 2.2, 0.90) for s in range(3)]
        + [rec("svdquant", s, 0.3 + s, 36.0, 2.3, 0.95) for s in range(3)]
        + [rec("smoothquant", s, 9.0, 20.0, 1.6, 0.48) for s in range(3)]
        + [rec("repq", s, 10.0, 20.0 - s, 1.7, 0.50) for s in range(3)]
        + [rec("rtn+dynamic+gptq", s, 9.5, 21.0, 1.6, 0.48) for s in range(3)]
    )
    lead = paired_lead(recs).splitlines()
    # peers by FID to FP; the branch config only fits under SVDQuant's size and GBOPs
    assert lead == [
        "- W4A4: Q-DiT (+ search) + GPTQ + rank-32 branch minus SVDQuant, 3 paired seeds: "
        "FID to FP -0.100 ± 0.000, PSNR to FP (dB) +3.00 ± 2.00",
        "- W4A4: Q-DiT, per-channel + GPTQ minus SmoothQuant, 3 paired seeds: "
        "FID to FP +0.500 ± 0.000, PSNR to FP (dB) +1.00 ± 0.00",
        "- W4A4: Q-DiT (+ search) + GPTQ minus RepQ-ViT, 3 paired seeds: "
        "FID to FP -8.600 ± 1.000, PSNR to FP (dB) +17.00 ± 1.00",
    ]
    assert paired_lead([r for r in recs if r.method.startswith("qdit")]) == ""  # no peer: nothing to say
    alone = [r for r in recs if r.method in ("qdit", "svdquant", "smoothquant")]
    assert "none of ours is within the size and GBOPs of SmoothQuant" in paired_lead(alone)
