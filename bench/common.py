"""What the GPU scripts share (bench/gpu_check.py, bench/gpu_bench.py): child commands run from the project root with
their output in one log, row counts scaled down for a CPU dry run, and the machine a table was measured on."""

import json
import os
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


def describe_cpu() -> dict:
    """The CPU (lscpu) and the instructions that decide its bf16 speed (AMX, AVX512-BF16)."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "?").strip(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(flag.startswith("amx") for flag in flags), "cores": os.cpu_count()}


def machine_name() -> str:
    """The GPU's name, or the CPU's with its bf16 instructions and the threads the run used."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = describe_cpu()
    flags = [name for name, present in (("amx_bf16", cpu["amx"]), ("avx512_bf16", cpu["avx512_bf16"])) if present]
    return f"{cpu['cpu']} ({', '.join(flags or ['no bf16 instructions'])}), {torch.get_num_threads()} threads"


def write_table(name: str, lines: list[str], args, rows: list) -> None:
    """results/NAME.md (the table) and results/NAME.json (the machine, the arguments, every row)."""
    path = ROOT / "results" / name
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"machine": describe_machine(), "args": vars(args), "rows": rows},
                                                    indent=1) + "\n")

