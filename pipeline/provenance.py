"""What produced an artifact: the code, the parameters, the seeds and the FP model.

Every stage writes a `provenance` record into its output's JSON (model: provenance.json;
calibrate: manifest.json; stats: index.json; search: search.json; quantize: quant.json;
sample: info.json; evaluate: metrics.json):

  stage          the stage that wrote it
  code_sha256    hash of the source the stage's command imports (its import closure within
                 pipeline/ and stages/: exactly its code deps in dvc.yaml, which a test checks).
                 Not the git commit, nor all the code: the same code gives the same bytes in any
                 checkout or `dvc exp` workspace, and an edit to code a stage never runs changes
                 neither its deps nor its bytes, so a fresh clone reproduces dvc.lock
  params_sha256  hash of the parameters the stage depends on (its DVC params). Never
                 trainer.*: 1 and N devices write the same bytes
  seeds          the seeds it used
  model          the fingerprint of data/model (sha256 of its files) it was made from

A stage reads its inputs' records and refuses one made from another model than data/model.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CODE = ("pipeline", "stages")  # the packages whose source is hashed and tracked by DVC
MODEL_FILE = "provenance.json"  # inside the model directory; not part of its own fingerprint


def _module_file(name: str) -> Path | None:
    """The file of a dotted module name of this repository, or None (not ours)."""
    if name.split(".")[0] not in CODE:
        return None
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_packages(name: str) -> set[Path]:
    """A module's file and the __init__.py of every package above it (Python runs them all)."""
    parts = name.split(".")
    files = {_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)}
    return {f for f in files if f is not None}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return out


def import_closure(module: str) -> set[Path]:
    """Every file of pipeline/ and stages/ that importing `module` may run: its imports,
    transitively, also those inside functions (they run when the function does), and the
    packages' __init__.py files. Read from the source (AST), nothing is imported."""
    todo = list(_with_packages(module))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            todo += [f for f in _with_packages(name) if f not in seen]
    return seen


@functools.cache
def code_sha256(module: str | None = None) -> str:
    """sha256 of the source of `module`'s import closure (every file of pipeline/ and stages/
    when None), over relative names and bytes."""
    files = import_closure(module) if module else [f for d in CODE for f in (ROOT / d).rglob("*.py")]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.relative_to(ROOT).as_posix()}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
    from pipeline.config import select

    values = {k: select(cfg, k) for k in keys}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(cfg, stage: str, module: str, keys: list[str], seeds: dict[str, int], model: str | None) -> dict:
    """The record of what `stage` (whose command runs `module`) writes now."""
    return {
        "stage": stage,
        "code_sha256": code_sha256(module),
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
