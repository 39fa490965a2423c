import pytest

from pipeline.ablation import METHODS, Setting, is_ours, method_label, method_of, parse_bits, settings, split_method


def test_parse_bits():
    assert parse_bits("W4A8") == (4, 8) and parse_bits("w4a16") == (4, 16)
    with pytest.raises(ValueError, match="bit setting 'W4'; expected W<bits>A<bits>"):
        parse_bits("W4")


def test_paper_sweep_has_every_method_at_the_ablation_bits_only():
    todo = settings(["W8A8", "W6A8", "W4A8", "W4A16", "W4A4"], ["rtn", "qdit"], ["W4A8", "W4A4"], [0, 1, 2])
    assert len(todo) == 3 * (3 * 2 + 2 * 4)  # W8A8, W6A8, W4A16: rtn + qdit; W4A8, W4A4: all four
    assert len({s.name("x") for s in todo}) == len(todo)
    at = {(s.bits, s.method) for s in todo}
    assert ("W4A8", "groups") in at and ("W8A8", "groups") not in at
    assert [s.seed for s in todo[:14]] == [0] * 14  # seed by seed
    # unquantized activations: + groups / + dynamic would repeat Q-DiT without search
    assert {s.method for s in settings(["W4A16"], [], ["W4A16"], [0])} == {"rtn", "qdit"}


def test_overrides_and_their_inverse():
    for method in METHODS:
        s = Setting("W6A8", method, 2)
        o = s.overrides()
        assert o["quant.weight.bits"] == "6" and o["quant.act.bits"] == "8"
        assert (o["sample.seed"], o["calibrate.seed"], o["search.image_seed"], o["search.seed"]) == ("6", "7", "8", "2")
        params = {k: (v == "true" if v in ("true", "false") else v) for k, v in o.items()}
        assert method_of(params) == method
    # seed 0 is params.yaml's defaults
    o = Setting("W4A8", "qdit", 0).overrides()
    assert (o["sample.seed"], o["calibrate.seed"], o["search.image_seed"], o["search.seed"]) == ("0", "1", "2", "0")
    assert Setting("W4A8", "rtn", 1).name("sweep") == "sweep-w4a8-rtn-s1"


@pytest.mark.parametrize(
    "method",
    [
        "smoothquant",
        "ptq4dit",
        "repq",
        "svdquant",
        "qdit+gptq",
        "qdit+gptq+lowrank",
        "dynamic+smooth",
        "rtn+dynamic+gptq",
        "smoothquant+dynamic",
    ],
)
def test_peers_and_options_round_trip(method):
    s = Setting("W4A4", method, 1)
    o = s.overrides()
    params = {k: (v == "true" if v in ("true", "false") else v) for k, v in o.items()}
    assert method_of(params) == method
    assert "+" not in s.name("sweep") and s.name("sweep") == f"sweep-w4a4-{method.replace('+', '_')}-s1"
    if method.startswith("qdit+gptq"):
        assert o["quant.weight.gptq"] == "true" and o["search.enabled"] == "true"
    if method in ("smoothquant", "ptq4dit", "repq", "svdquant"):
        assert (o["quant.method"], o["search.enabled"]) == (method, "false")
    if "+dynamic" in method:  # per-token dynamic activations on a per-channel method
        assert (o["quant.method"], o["quant.act.mode"]) == (method.split("+")[0], "dynamic")
    # dvc exp show writes an unset smoothing alpha as the string 'None'
    assert method_of(params | {"quant.smooth.alpha": "None", "quant.lowrank.rank": "None"}) == method.replace(
        "+smooth", ""
    ).replace("+lowrank", "")


def test_method_names_are_checked():
    assert split_method("qdit+lowrank+gptq") == ("qdit", ("gptq", "lowrank"))
    with pytest.raises(ValueError, match="method 'gptq'; allowed: rtn, groups"):
        split_method("gptq")
    with pytest.raises(ValueError, match="option 'lora' of 'qdit\\+lora'; allowed after"):
        split_method("qdit+lora")
    assert method_label("svdquant+gptq") == "SVDQuant + GPTQ"
    assert method_label("rtn+gptq+dynamic") == "Q-DiT, per-channel + GPTQ"
    assert method_label("smoothquant+dynamic") == "SmoothQuant + dynamic act."
    with pytest.raises(ValueError, match="'\\+dynamic' applies to rtn, smoothquant, ptq4dit, repq; qdit is"):
        split_method("qdit+dynamic")


def test_ours_are_the_ablation_past_rtn_and_qdit_per_channel():
    ours = [m for m in ("rtn", "rtn+gptq", "groups", "dynamic", "qdit+gptq+lowrank", "rtn+dynamic+gptq") if is_ours(m)]
    assert ours == ["groups", "dynamic", "qdit+gptq+lowrank", "rtn+dynamic+gptq"]
    assert not any(is_ours(m) for m in ("smoothquant+dynamic", "ptq4dit+gptq", "repq", "svdquant+smooth"))


def test_peers_run_only_at_their_bits_and_the_ablation_stays_whole():
    todo = settings(["W4A8"], ["smoothquant", "qdit+gptq"], ["W4A4"], [0])
    assert {(s.bits, s.method) for s in todo} == {
        ("W4A8", "smoothquant"),
        ("W4A8", "qdit+gptq"),
        ("W4A4", "rtn"),
        ("W4A4", "groups"),
        ("W4A4", "dynamic"),
        ("W4A4", "qdit"),
    }
