"""`python -m stages.preset NAME [-S key=value ...]`: run a parameter preset as a DVC experiment.

Not a DVC stage. A preset (presets/NAME.yaml) holds the keys that differ from params.yaml,
e.g. the paper's protocol on DiT-XL/2 (`paper-256`, `paper-512`). The command flattens it to
`-S` overrides, adds yours (which win), validates the merged parameters as every stage would -
so a typo fails here, not hours into a run - and runs `dvc exp run -n NAME -S ...`
(`--queue` to queue it instead, `--dry-run` to print the command).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.config import load_params
from pipeline.errors import UserError
from stages.common import main

PRESETS = Path("presets")


def add_args(parser) -> None:
    parser.add_argument("name", help="preset: a file presets/<name>.yaml")
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more override, after the preset's (repeatable)",
    )
    parser.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command and exit")


def overrides(path: Path) -> list[str]:
    """The preset's leaves as `key=value` (values in YAML flow style, as `dvc exp run -S` reads)."""
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of params.yaml sections")
    out: list[str] = []

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            value = yaml.safe_dump(node, default_flow_style=True, width=10**6).strip()
            out.append(f"{prefix}={value.removesuffix('...').strip()}")

    walk("", tree)
    return out


def run(cfg, args) -> None:
    path = PRESETS / f"{args.name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise UserError(f"preset {args.name!r}: no file {path}; available: {', '.join(known) or 'none'}")
    sets = overrides(path) + list(args.set)
    try:
        load_params(args.params, sets)
    except UserError as e:
        raise UserError(f"preset {args.name} (with your -S): {e}") from None
    cmd = ["dvc", "exp", "run", "-n", args.name] + [a for s in sets for a in ("-S", s)]
    cmd += ["--queue"] if args.queue else []
    print(shlex.join(cmd))
    if args.dry_run:
        return
    code = subprocess.run(cmd).returncode
    if code:
        sys.exit(code)


def cli(argv: list[str] | None = None) -> None:
    main("preset", run, add_args, argv=argv)


if __name__ == "__main__":
    cli()
