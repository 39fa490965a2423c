"""dvc.yaml's deps of each stage cover every file of pipeline/ and stages/ its command imports,
transitively: an edit to any of them reruns the stage, so no table mixes old and new code.

The import closure (pipeline.provenance.import_closure) is read from the source (AST), every
import statement included, also those inside functions, plus the packages' __init__.py files.
The same closure is what a stage's `code_sha256` hashes.
"""

from __future__ import annotations

import pytest
import yaml

from pipeline.provenance import CODE, import_closure
from stages.common import stage_module as module_of
from tests.helpers import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    words = stage["cmd"].split()
    assert words[:3] == ["python", "-m", words[2]], f"not a `python -m` command: {stage['cmd']}"
    return words[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_the_provenance_hashes_the_module_dvc_runs(name):
    assert module_of(name) == stage_module(STAGES[name])


def missing_deps(stage: dict) -> list[str]:
    """Imported files of the repo that no dep (a file, or a folder above it) of the stage covers."""
    deps = [REPO / d for d in stage.get("deps", [])]
    missing = []
    for f in sorted(import_closure(stage_module(stage))):
        if not any(f == d or d in f.parents for d in deps):
            missing.append(f.relative_to(REPO).as_posix())
    return missing


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_file_is_a_dependency_of_the_stage(name):
    assert missing_deps(STAGES[name]) == [], f"stage {name!r}: imported files missing from its deps in dvc.yaml"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_code_dependency_is_imported(name):
    """No code dep is there for nothing: removing any one leaves an imported file uncovered
    (so the check above can fail, and a stage does not rerun for code it never runs)."""
    stage = STAGES[name]
    for dep in stage["deps"]:
        if dep.split("/")[0] in CODE:
            fewer = dict(stage, deps=[d for d in stage["deps"] if d != dep])
            assert missing_deps(fewer), f"stage {name!r}: dep {dep} covers no file its command imports"


def test_the_closure_follows_imports_inside_functions_and_packages():
    closure = {f.relative_to(REPO).as_posix() for f in import_closure("stages.quantize")}
    assert {
        "stages/__init__.py",
        "stages/common.py",
        "pipeline/__init__.py",
        "pipeline/config.py",
        "pipeline/quant/__init__.py",
        "pipeline/quant/apply.py",
    } <= closure
    assert "pipeline/provenance.py" in closure  # imported inside stages.common.provenance()
    assert not any(p.startswith("tests/") for p in closure)
