import numpy as np
import torch

from pipeline.models import tiny


def _train(steps=80, seed=0):
    images, labels = tiny.load_digits_images()
    torch.manual_seed(seed)
    model = tiny.build_tiny_dit(num_layers=1, num_heads=2, head_dim=16, patch_size=2)
    return tiny.train_tiny_dit(
        model,
        tiny.to_model_range(images),
        torch.from_numpy(labels),
        steps=steps,
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=5,
        ema_decay=0.99,
        class_dropout=0.1,
        seed=seed,
        progress=False,
    )


def test_digits_images_are_uint8_8x8():
    images, labels = tiny.load_digits_images()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert set(labels.tolist()) == set(range(10))
    x = tiny.to_model_range(images)
    assert x.shape == (1797, 1, 8, 8) and x.min() == -1.0 and x.max() == 1.0


def test_build_applies_adaln_zero_and_disables_per_block_label_dropout():
    model = tiny.build_tiny_dit(num_layers=2, num_heads=2, head_dim=16, patch_size=2)
    for block in model.transformer_blocks:
        assert block.norm1.linear.weight.abs().sum() == 0
        assert block.norm1.emb.class_embedder.dropout_prob == 0.0
        # the null label (index 10) still has its own embedding row for guidance
        assert block.norm1.emb.class_embedder.embedding_table.num_embeddings == tiny.NUM_CLASSES + 1
    assert model.proj_out_2.weight.abs().sum() == 0


def test_training_is_deterministic_and_learns():
    ema_a, losses_a = _train()
    ema_b, losses_b = _train()
    assert losses_a == losses_b
    for pa, pb in zip(ema_a.parameters(), ema_b.parameters()):
        assert torch.equal(pa, pb)
    assert np.mean(losses_a[-10:]) < 0.5 * np.mean(losses_a[:5])
    assert not ema_a.training
