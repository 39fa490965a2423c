"""The search's checkpoint: every evaluated plan, rewritten after each evaluation, so a killed
search resumes where it stopped - but only with the same inputs.

The checkpoint is a JSON file {"fingerprint": key, **Evolution.state()}. `key` hashes whatever
the fitness of a plan depends on (the caller's search and quantization settings, the model,
the calibration data); a checkpoint of other inputs is discarded with a message.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import read_json, write_json


def fingerprint(inputs: dict) -> str:
    """A short hash of JSON-able inputs (key order does not matter)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, path: Path, key: str, log: Callable[[str], None] = print):
        self.path, self.key, self.log = Path(path), key, log

    def resume(self) -> dict | None:
        """The state of an earlier run with the same key, if any. Anything else in the
        checkpoint's folder is state of other inputs and is removed."""
        folder = self.path.parent
        if not folder.exists():
            return None
        state = None
        if self.path.is_file():
            try:
                state = read_json(self.path, "search checkpoint")
            except UserError as e:
                self.log(f"[search] {e}; starting afresh")
        if state is not None and state.get("fingerprint") == self.key:
            self.log(
                f"[search] resuming from {self.path}: {len(state['evaluated'])} plans evaluated, "
                f"{state['generations_done']} generations done"
            )
            return state
        self.log(f"[search] {folder} holds the state of other inputs; starting afresh")
        shutil.rmtree(folder)
        return None

    def save(self, state: dict, path: Path | None = None) -> None:
        write_json(path or self.path, {"fingerprint": self.key, **state})
