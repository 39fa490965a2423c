"""What produced an artifact: the code, the parameters, the seeds and the FP model.

Every stage writes a `provenance` record into its output's JSON (model: provenance.json;
calibrate: manifest.json; stats: index.json; search: search.json; quantize: quant.json;
sample: info.json; evaluate: metrics.json):

  stage          the stage that wrote it
  code_sha256    hash of the pipeline's source (every .py under pipeline/ and stages/). Not the
                 git commit: the same code gives the same bytes in any checkout or `dvc exp`
                 workspace, and DVC's cache keeps working across commits that change no code
  params_sha256  hash of the parameters the stage depends on (its DVC params). Never
                 trainer.*: 1 and N devices write the same bytes
  seeds          the seeds it used
  model          the fingerprint of data/model (sha256 of its files) it was made from

A stage reads its inputs' records and refuses one made from another model than data/model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "provenance.json"  # inside the model directory; not part of its own fingerprint
_code: str | None = None


def code_sha256() -> str:
    global _code
    if _code is None:
        h = hashlib.sha256()
        for folder in ("pipeline", "stages"):
            for f in sorted((ROOT / folder).rglob("*.py")):
                h.update(f"{f.relative_to(ROOT).as_posix()}\0".encode())
                h.update(f.read_bytes())
        _code = h.hexdigest()[:16]
    return _code


def tree_sha256(directory: Path) -> str:
    """sha256 over the relative names and bytes of every file under `directory`."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != MODEL_FILE):
        h.update(f"{f.relative_to(directory).as_posix()}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def params_sha256(cfg, keys: list[str]) -> str:
    values = {}
    for k in keys:
        v = OmegaConf.select(cfg, k)
        values[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(cfg, stage: str, keys: list[str], seeds: dict[str, int], model: str | None) -> dict:
    return {
        "stage": stage,
        "code_sha256": code_sha256(),
        "params_sha256": params_sha256(cfg, keys),
        "params": list(keys),
        "seeds": {k: int(v) for k, v in seeds.items()},
        "model": model,
    }


def model_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint the `model` stage recorded; None for a directory from an older version."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("model")
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{path} is corrupt (not a JSON object); rerun the `model` stage") from None


def require_same_model(inputs: dict[str, dict | None], model_dir: Path) -> None:
    """Refuse inputs (path -> its JSON) whose provenance names another model than model_dir's.
    Inputs without a record (older versions, hand-made files) are let through."""
    current = model_fingerprint(model_dir)
    for path, content in inputs.items():
        made = ((content or {}).get("provenance") or {}).get("model")
        if current and made and made != current:
            raise UserError(
                f"{path} was made from another FP model (fingerprint {made}) than the one in "
                f"{model_dir} ({current}): rerun the stages after `model` (`dvc repro`), or "
                "restore the model it was made from"
            )
