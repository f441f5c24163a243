"""The process the loop runs in: one group of processes (not N lone trainings), the distributed type that really runs,
logging on the main process only, and all the CPU cores under `accelerate launch`."""

import logging
import os
from pathlib import Path

import datasets
import torch
import transformers
from accelerate.utils import DistributedType

from training.cli import RunError

logger = logging.getLogger("train")


def check_process_group(accelerator) -> None:
    """`--multi_gpu` on a machine without GPUs starts N processes that never join one group: each would train alone."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RunError(f"the launcher started {launched} processes but they did not join one group, so each would "
                       f"train alone; on a CPU set ACCELERATE_USE_CPU=1: ACCELERATE_USE_CPU=1 accelerate launch "
                       f"--multi_gpu --num_processes {launched} train.py ...")


# What `accelerate launch --config_file` asks for, as the environment variable it sets for the processes.
LAUNCHER_ASKS = {"ACCELERATE_USE_FSDP": DistributedType.FSDP, "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED,
                 "ACCELERATE_USE_MEGATRON_LM": DistributedType.MEGATRON_LM}


def log_distributed_type(accelerator) -> None:
    """Say what runs (DDP, FSDP, ... on which device), and warn when it is not what the launcher's config asked for:
    accelerate quietly turns FSDP on a machine without GPUs (ACCELERATE_USE_CPU=1) into plain multi-CPU DDP."""
    actual = accelerator.distributed_type
    logger.info(f"distributed type {actual.value}: {accelerator.num_processes} process(es) on "
                f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}")
    for variable, asked in LAUNCHER_ASKS.items():
        if os.environ.get(variable, "false").lower() == "true" and actual != asked:
            logger.warning(f"the launcher's config asked for {asked.value} ({variable}=true) but accelerate runs "
                           f"{actual.value} on {accelerator.device.type}: the model is not sharded (accelerate turns "
                           f"{asked.value} into {actual.value} without a GPU)")


def configure_logging(accelerator) -> None:
    """One timestamped stream on stderr (the main process of each machine; errors from the others)."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True,
                        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its checkpoint logs name every file; we log one line
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        logger.warning("fp16 on a CPU runs far slower than fp32 (no fast fp16 kernels here); use --mixed_precision bf16")


def under_accelerate_launch() -> bool:
    """Started by `accelerate launch` (one process or several), not as `python train.py`."""
    return "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by the launcher only


def use_the_cores(accelerator) -> None:
    """On a CPU, `accelerate launch` sets OMP_NUM_THREADS=1 per process unless told otherwise, which halves a 2-core
    machine. Use cores / local processes instead, unless the user chose (launcher flag or their own OMP_NUM_THREADS)."""
    if accelerator.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") != "1" or not under_accelerate_launch():
        return
    try:  # the launcher is our parent process: did its command line or environment set the threads?
        launcher = Path(f"/proc/{os.getppid()}")
        if (b"--num_cpu_threads_per_process" in (launcher / "cmdline").read_bytes()
                or b"OMP_NUM_THREADS=" in (launcher / "environ").read_bytes()):
            return
    except OSError:
        return  # not Linux, or not allowed to look: leave the launcher's choice alone
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads > 1:
        torch.set_num_threads(threads)
        logger.info(f"accelerate launch set OMP_NUM_THREADS=1; using {threads} threads per process (cores / local "
                    "processes). Pass --num_cpu_threads_per_process to accelerate launch to choose.")
