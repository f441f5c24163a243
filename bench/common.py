"""What the GPU scripts share (bench/gpu_check.py, bench/gpu_bench.py): child commands run from the project root with
their output in one log, row counts scaled down for a CPU dry run, and the machine a table was measured on."""

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scaled_rows(n: int, scale: float) -> int:
    """n rows times `scale` (a dry run's fraction), at least 16."""
    return max(16, int(n * scale))


def run_logged(command: list, log: Path, timeout: int) -> tuple[int, float]:
    """Run a command to its end from the project root, its output appended to `log`: (exit code, wall seconds)."""
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(map(str, command))}\n")
        handle.flush()
        result = subprocess.run(list(map(str, command)), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                timeout=timeout)
    return result.returncode, time.perf_counter() - start


def describe_machine() -> dict:
    """The device and the versions behind a table."""
    import accelerate
    import torch
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU dry run)"
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}
