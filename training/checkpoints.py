"""Checkpoints: written whole or not at all, found again by name, pruned, and checked against the resuming run.

A checkpoint is `output_dir/checkpoints/step_N` (or `epoch_N`): `accelerator.save_state` (model, optimizer, scheduler,
RNG states) plus `training_state.json` (where the loop stands and what it has measured so far).
"""

import json
import logging
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(accelerator, output_dir, name: str, state: dict) -> Path:
    """Save into a temporary folder, then rename it into place: a crash mid-save never leaves a broken checkpoint."""
    final = checkpoints_dir(output_dir) / name
    partial = final.with_name(f".{name}.partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a crash during an earlier save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its part (its RNG state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def _step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / STATE_FILE).read_text())["completed_steps"]


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints (they have a state file; partial ones are dot-folders), oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if re.fullmatch(r"(step|epoch)_\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=_step_of)


def find_checkpoint(spec: str, output_dir) -> Path:
    """`latest` (the newest complete checkpoint in output_dir) or a checkpoint folder; one line if there is none."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir(output_dir)}; "
                "start without --resume_from_checkpoint (use --checkpointing_steps to write checkpoints)"
            )
        return found[-1]
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {spec}: not a checkpoint folder (no {STATE_FILE} in it)")
    return path


def load_training_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def config_differences(saved: dict, current: dict, given: dict) -> list[str]:
    """`name: saved -> current` for every setting a resume must repeat (train.py's REPEAT flags as the run resolved
    them, and the process count) whose saved value is neither the resolved one nor the flag as given (what older
    checkpoints saved); settings newer than the checkpoint are not compared."""
    return [f"{key}: {saved[key]!r} -> {value!r}" for key, value in current.items()
            if key in saved and saved[key] not in (value, given.get(key, value))]


def prune_checkpoints(output_dir, keep: int | None, best_step: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, never the one taken at the best evaluation's step."""
    if keep is None:
        return []
    found = list_checkpoints(output_dir)
    removable = [p for p in found[: max(len(found) - keep, 0)] if _step_of(p) != best_step]
    for path in removable:
        shutil.rmtree(path)
    return removable
