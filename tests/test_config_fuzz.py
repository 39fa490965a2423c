"""Property-based tests of params.yaml validation: every key of the schema, hostile values.

Invalid input must be refused at load with a message naming the key; valid input must load.
The keys are params.yaml's leaves, which are exactly the schema's (the schema holds no values).
"""

import copy
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.config import Params, load_params
from pipeline.errors import UserError
from tests.helpers import REPO, deep_update

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
_DIR = tempfile.TemporaryDirectory()  # hypothesis runs many examples per test: one file, rewritten


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a params mapping."""
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _schema_keys(model: type[BaseModel], prefix=""):
    for k, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _schema_keys(f.annotation, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


LEAVES = dict(_leaves(BASE))
SECTIONS = sorted({k.split(".")[0] for k in LEAVES})


def _nested(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _replaced(key: str, value) -> dict:
    """The repository's params with one leaf replaced (not merged into) by value."""
    params = copy.deepcopy(BASE)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return params


def _load(extra: dict, replace: bool = False):
    path = Path(_DIR.name) / "params.yaml"
    path.write_text(yaml.safe_dump(extra if replace else deep_update(BASE, extra), sort_keys=False))
    return load_params(path)


def _refused(extra: dict, replace: bool = False) -> str:
    with pytest.raises(UserError) as err:
        _load(extra, replace)
    return str(err.value)


WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
NOT_A_NUMBER = WORDS.filter(
    lambda w: w not in {"inf", "nan", "infinity", "true", "false", "yes", "no", "on", "off", "null", "none"}
)
CONTAINERS = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=3), st.dictionaries(WORDS, st.integers(), min_size=1, max_size=2)
)


def _wrong_values(default):
    """Values of a type that a key with this default cannot take."""
    if isinstance(default, bool):
        return st.one_of(NOT_A_NUMBER, CONTAINERS)
    if isinstance(default, (int, float)):
        return st.one_of(NOT_A_NUMBER, CONTAINERS)
    if isinstance(default, str):
        return CONTAINERS
    if isinstance(default, list):
        return st.dictionaries(WORDS, st.integers(), min_size=1, max_size=2)
    return None  # Optional or Any-typed keys: no value is of the wrong type


TYPED = sorted(k for k, v in LEAVES.items() if _wrong_values(v) is not None)


def test_params_yaml_sets_exactly_the_keys_of_the_schema():
    assert sorted(LEAVES) == sorted(_schema_keys(Params))


@FUZZ
@given(key=st.sampled_from(sorted(LEAVES)))
def test_a_missing_key_is_refused_naming_it(key):
    params = copy.deepcopy(BASE)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    del node[leaf]
    assert f"missing key '{key}'" in _refused(params, replace=True)


@FUZZ
@given(key=st.sampled_from(TYPED), data=st.data())
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(key, data):
    value = data.draw(_wrong_values(LEAVES[key]))
    assert key in _refused(_replaced(key, value), replace=True)


@FUZZ
@given(section=st.sampled_from(SECTIONS), name=WORDS)
def test_an_unknown_key_is_refused_naming_it(section, name):
    if f"{section}.{name}" in LEAVES or any(k.startswith(f"{section}.{name}.") for k in LEAVES):
        return  # a real key
    msg = _refused({section: {name: 1}})
    assert f"unknown key '{section}.{name}'" in msg and f"allowed in section '{section}'" in msg


POSITIVE = [
    "calibrate.num_samples",
    "calibrate.steps",
    "calibrate.batch_size",
    "sample.num_images",
    "sample.steps",
    "sample.batch_size",
    "search.population",
    "search.batch_size",
    "evaluate.batch_size",
    "stats.batch_size",
    "model.tiny.num_layers",
    "evaluate.nearest_k",
    "sweep.jobs",
]


@FUZZ
@given(key=st.sampled_from(POSITIVE), value=st.integers(max_value=0))
def test_a_count_below_one_is_refused_naming_key_and_value(key, value):
    assert f"{key} = {value!r} is not allowed" in _refused(_nested(key, value))


@FUZZ
@given(
    key=st.sampled_from(["quant.weight.bits", "quant.act.bits", "quant.attn_bits"]),
    value=st.integers(min_value=-4, max_value=64).filter(lambda b: b not in (2, 3, 4, 5, 6, 7, 8, 16)),
)
def test_an_unsupported_bit_width_is_refused(key, value):
    assert f"{key} = {value} is not allowed; allowed: 2 to 8, or 16" in _refused(_nested(key, value))


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def valid_params(draw):
    """A consistent parameter set across sections, drawn from what each key allows."""
    heads = draw(st.integers(1, 6))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    hidden = heads * head_dim
    g = draw(st.sampled_from(_divisors(hidden)))
    candidates = sorted(set(draw(st.lists(st.sampled_from(_divisors(hidden)), max_size=4))) | {g})
    devices = draw(st.sampled_from(["auto", 1, 2, -1]))
    least = devices if isinstance(devices, int) and devices > 1 else 1
    return {
        "model": {
            "tiny": {
                "num_heads": heads,
                "head_dim": head_dim,
                "num_layers": draw(st.integers(1, 6)),
                "patch_size": draw(st.sampled_from([1, 2, 4, 8])),
            }
        },
        "calibrate": {
            "num_samples": draw(st.integers(least, 512)),
            "steps": draw(st.integers(1, 1000)),
            "guidance_scale": draw(st.floats(1.0, 10.0)),
            "scheduler": draw(st.sampled_from(["ddim", "ddpm", "dpm_solver"])),
        },
        "quant": {
            "method": draw(st.sampled_from(["none", "rtn", "qdit"])),
            "weight": {
                "bits": draw(st.sampled_from([2, 3, 4, 5, 6, 7, 8, 16])),
                "group_size": g,
                "symmetric": draw(st.booleans()),
            },
            "act": {
                "bits": draw(st.sampled_from([2, 4, 8, 16])),
                "mode": draw(st.sampled_from(["auto", "dynamic", "static", "static_timestep"])),
                "group_size": draw(st.sampled_from([None, *_divisors(hidden)])),
            },
            "backend": draw(st.sampled_from(["fake", "int8"])),
        },
        "search": {
            "enabled": draw(st.booleans()),
            "group_sizes": candidates,
            "fitness": draw(st.sampled_from(["mse", "sample_mse", "fid_fp", "fid"])),
            "num_images": draw(st.integers(max(2, least), 256)),
            "mutation_prob": draw(st.floats(0.0, 1.0)),
            "generations": draw(st.integers(0, 20)),
        },
        "sample": {
            "num_images": draw(st.integers(least, 10000)),
            "steps": draw(st.integers(1, 1000)),
            "seed": draw(st.integers(0, 4095)),
        },
        "trainer": {
            "devices": devices,
            "strategy": "ddp" if devices not in ("auto", 1) else "auto",
            "precision": draw(st.sampled_from(["32-true", "bf16-true", "16-mixed"])),
        },
    }


@FUZZ
@given(params=valid_params())
def test_every_valid_combination_loads(params):
    cfg = _load(params)
    assert cfg.quant.weight.group_size == params["quant"]["weight"]["group_size"]
    assert cfg.trainer.devices == params["trainer"]["devices"]


@FUZZ
@given(params=valid_params(), g=st.integers(2, 200))
def test_a_group_size_that_does_not_divide_the_hidden_size_is_refused(params, g):
    tiny = params["model"]["tiny"]
    hidden = tiny["num_heads"] * tiny["head_dim"]
    if hidden % g == 0:
        return
    params = deep_update(params, {"quant": {"method": "qdit", "weight": {"bits": 4, "group_size": g}}})
    msg = _refused(params)
    assert f"quant.weight.group_size = {g} is not allowed" in msg and f"hidden size {hidden}" in msg


@FUZZ
@given(params=valid_params())
def test_search_candidates_must_include_the_uniform_group_size(params):
    g = params["quant"]["weight"]["group_size"]
    others = [c for c in params["search"]["group_sizes"] if c != g] or [g * 2]
    params = deep_update(
        params, {"quant": {"method": "qdit", "weight": {"bits": 4}}, "search": {"enabled": True, "group_sizes": others}}
    )
    assert f"allowed: a list that includes quant.weight.group_size = {g}" in _refused(params)


@FUZZ
@given(
    params=valid_params(),
    devices=st.integers(2, 64),
    key=st.sampled_from(["calibrate.num_samples", "sample.num_images"]),
)
def test_fewer_items_than_devices_are_refused(params, devices, key):
    params = deep_update(
        params,
        {
            "trainer": {"devices": devices, "strategy": "ddp"},
            "calibrate": {"num_samples": devices},
            "sample": {"num_images": devices},
            "search": {"num_images": max(2, devices)},
        },
    )
    params = deep_update(params, _nested(key, devices - 1))
    assert f"{key} = {devices - 1} is not allowed; allowed: at least trainer.devices = {devices}" in _refused(params)
