"""Checkpoints: written whole or not at all, found again by name, pruned, and checked against the resuming run.

A checkpoint is `output_dir/checkpoints/step_N` (or `epoch_N`): `accelerator.save_state` (model, optimizer, scheduler,
RNG states) plus `training_state.json` (where the loop stands and what it has measured so far).
"""

import json
import logging
import math
import re
import shutil
from pathlib import Path

from safetensors import safe_open

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
    try:
        accelerator.save_state(str(partial))  # every process writes its part (its RNG state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            logger.info(f"Saved checkpoint {final}")
    except OSError as error:  # a full disk, no permission: the earlier checkpoints stay as they were
        shutil.rmtree(partial, ignore_errors=True)
        kept = list_checkpoints(output_dir)
        raise OSError(f"cannot write checkpoint {final} ({error.strerror or error}); "
                      f"{f'the last good checkpoint is {kept[-1]}' if kept else 'no checkpoint was saved'}; free "
                      "space (or pass another --output_dir) and resume with --resume_from_checkpoint") from error
    accelerator.wait_for_everyone()
    return final


def _step_of(checkpoint: Path) -> float:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())["completed_steps"]
    except (OSError, ValueError, KeyError):
        return math.inf  # unreadable: sorted last, so that `latest` names it rather than passing over it


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


def damaged_file(checkpoint: Path, num_processes: int) -> str | None:
    """What cannot be read in a checkpoint (`FILE (why)`), or None: the state file, every process's RNG state, the
    optimizer, and the model's safetensors headers. Read before anything is loaded or written."""
    try:
        json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        return f"{STATE_FILE} ({type(error).__name__}: {str(error).splitlines()[0]})"
    for name in ("optimizer.bin", "custom_checkpoint_0.pkl", *(f"random_states_{i}.pkl" for i in range(num_processes))):
        if not (checkpoint / name).is_file() or (checkpoint / name).stat().st_size == 0:
            return f"{name} (missing or empty)"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        return "model.safetensors (missing)"
    for file in weights:
        try:
            with safe_open(file, framework="pt") as tensors:
                for name in tensors.keys():
                    tensors.get_slice(name)  # the header's offsets must lie inside the file
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            return f"{file.name} ({str(error).splitlines()[0]})"
    return None


def intact_checkpoint_advice(output_dir, damaged: Path, num_processes: int) -> str:
    """Where to resume from instead of a damaged checkpoint: the newest intact one, if any."""
    intact = [p for p in list_checkpoints(output_dir) if p != damaged and damaged_file(p, num_processes) is None]
    if not intact:
        return "no intact checkpoint is left in its folder; start again without --resume_from_checkpoint"
    return f"the newest intact one is {intact[-1]}: --resume_from_checkpoint {intact[-1]}"


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
