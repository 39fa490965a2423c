import pytest

from pipeline.ablation import METHODS, Setting, method_of, parse_bits, settings


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
