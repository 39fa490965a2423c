import torch

from pipeline.quant.apply import input_hessians, outputs, quantize
from pipeline.quant.cost import measure_shapes
from pipeline.search.fitness import CandidateModel
from pipeline.search.space import SearchSpace
from tests.quant.test_apply import _batches, _model, _plan, _rel
from tests.quant.test_transform import _stats

LAYER = "transformer_blocks.0.ff.net.2"


def _space(model, batches, **kw):
    plan = _plan(model, weight_bits=3, act_bits=16, **kw)
    return SearchSpace(plan, measure_shapes(model, plan.layers, batches[0]), [8, 16, 32])


def test_every_candidate_is_the_layer_as_quantize_builds_it_without_gptq():
    model, batches = _model(), _batches()
    space = _space(model, batches)
    candidates = CandidateModel(model, space, progress=False)
    for g in (8, 32):
        genome = tuple(g for _ in space.genes)
        direct = quantize(_model(), space.plan(genome))
        assert torch.equal(outputs(candidates.use(genome), batches), outputs(direct, batches))


def test_gptq_variants_come_from_the_fp_hessians_and_beat_rtn():
    model, batches = _model(), _batches(6)
    ref = outputs(_model(), batches)
    rtn = CandidateModel(_model(), _space(_model(), batches), progress=False)
    space = _space(model, batches, gptq=True)
    gptq = CandidateModel(model, space, progress=False, calibration=batches)
    for g in (8, 16, 32):
        genome = tuple(g for _ in space.genes)
        assert _rel(outputs(gptq.use(genome), batches), ref) < _rel(outputs(rtn.use(genome), batches), ref)
    # a variant's codes are GPTQ's on the Hessian of the FP input, the same for every genome
    fp = _model()
    h = input_hessians(fp, [LAYER], batches)[LAYER]
    from pipeline.quant.apply import gptq_codes

    codes, _, _ = gptq_codes(fp.get_submodule(LAYER), space.layer_plan(LAYER, 16), space.base, h)
    assert torch.equal(gptq.variants[(LAYER, 16)].qweight, codes)


def test_variants_carry_smoothing_and_the_low_rank_branch():
    model, batches = _model(), _batches()
    stats = _stats(_model(), batches)
    space = _space(model, batches, smooth_alpha=0.5, lowrank_rank=4)
    candidates = CandidateModel(model, space, stats, progress=False)
    variant = candidates.variants[(LAYER, 16)]
    assert variant.lowrank_rank == 4 and variant.in_scale is not None  # fc2: smoothed at run time
    genome = space.base_genome
    direct = quantize(_model(), space.plan(genome), stats=stats)
    assert torch.allclose(outputs(candidates.use(genome), batches), outputs(direct, batches), atol=1e-6)
