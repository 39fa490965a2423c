from pipeline.models import tiny
from pipeline.quant.targets import default_targets


def test_default_targets_are_attention_and_feed_forward_of_every_block():
    model = tiny.build_tiny_dit(num_layers=3, num_heads=2, head_dim=16, patch_size=2)
    names = [n for n, _ in model.named_modules()]
    targets = default_targets(names)
    assert len(targets) == 3 * 6
    assert "transformer_blocks.2.attn1.to_out.0" in targets and "transformer_blocks.0.ff.net.2" in targets
    assert not any("norm1" in t or "proj_out" in t or "pos_embed" in t for t in targets)
