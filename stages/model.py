"""Stage `model`: the FP DiT as a diffusers directory in data/model/.

model.source = tiny: train the embedded digits DiT and its feature classifier here.
Otherwise: load a DiT pipeline (transformer, VAE, scheduler) from a local directory or the Hub.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.config import flat
from pipeline.io import atomic_dir, write_json
from pipeline.models import classifier as clf
from pipeline.models import tiny
from pipeline.models.loader import fetch_dit, model_summary, save_fp_model
from pipeline.provenance import MODEL_FILE, tree_sha256
from pipeline.tracking import log_stage
from stages.common import MODEL, main, provenance


def run(cfg, args) -> None:
    m = cfg.model
    metrics: dict = {}
    series: dict = {}
    start = time.time()
    if m.source == "tiny":
        images, labels = tiny.load_digits_images()
        t = m.tiny
        torch.manual_seed(m.seed)
        transformer = tiny.build_tiny_dit(t.num_layers, t.num_heads, t.head_dim, t.patch_size)
        transformer, losses = tiny.train_tiny_dit(
            transformer,
            tiny.to_model_range(images),
            torch.from_numpy(labels),
            steps=t.train_steps,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_steps,
            ema_decay=t.ema_decay,
            class_dropout=t.class_dropout,
            seed=m.seed,
        )
        c = m.classifier
        classifier, accuracy = clf.train_classifier(
            images,
            labels,
            epochs=c.epochs,
            batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            holdout=c.holdout,
            seed=m.seed,
        )
        sched = tiny.noise_scheduler()
        sched_cfg = {"_class_name": type(sched).__name__, **dict(sched.config)}
        vae = None
        window = max(1, len(losses) // 300)
        series["train_loss"] = [float(np.mean(losses[i : i + window])) for i in range(0, len(losses), window)]
        metrics |= {"final_loss": float(np.mean(losses[-100:])), "classifier_heldout_accuracy": accuracy}
        print(
            f"[model] tiny DiT final loss {metrics['final_loss']:.4f}; digit classifier held-out "
            f"accuracy {accuracy:.4f}"
        )
    else:
        transformer, vae, sched_cfg = fetch_dit(m.source)
    info = {"source": m.source, "latent": vae is not None, **model_summary(transformer)}
    if m.source == "tiny":
        info["classifier_heldout_accuracy"] = metrics["classifier_heldout_accuracy"]
    with atomic_dir(MODEL) as tmp:
        save_fp_model(tmp, transformer, vae, sched_cfg, info)
        if m.source == "tiny":
            clf.save_classifier(classifier, tmp / "classifier", metrics["classifier_heldout_accuracy"])
        # the fingerprint every later artifact records, to refuse one made from another model
        write_json(tmp / MODEL_FILE, provenance(cfg, "model") | {"model": tree_sha256(tmp)})
    metrics["seconds"] = time.time() - start
    metrics["parameters"] = info["parameters"]
    log_stage(cfg, "model", flat(cfg, ["model"]), metrics, [MODEL / "model.json"], series)


def cli(argv: list[str] | None = None) -> None:
    main("model", run, argv=argv)


if __name__ == "__main__":
    cli()
