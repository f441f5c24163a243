"""The speed settings train.py and predict.py share: whether to compile the model, how many padded shapes batches
come in (length buckets), the evaluation batch size, and which attention kernels a GPU uses. Each default is what
measured faster on its device type; an explicit flag always wins."""

import logging

import torch

logger = logging.getLogger("train")

COMPILE_MODES = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # these record a CUDA graph for every new input shape
BUCKET_MULTIPLE = 64  # 512 tokens fall into 8 shapes (64, 128, ..., 512)
EVAL_BATCH_SIZE = {"cuda": 64, "cpu": 8}  # a GPU at batch 8 waits on kernel launches; a CPU gains nothing from more


def compile_by_default(device: torch.device) -> bool:
    """On a GPU a step at batch 8 is bound by launching kernels, which compiling fuses; on a CPU the eager step
    measured faster (bench/cpu_compile.py) and a first compile costs minutes."""
    return torch.device(device).type == "cuda"


def resolve_speed(device, torch_compile: bool | None, compile_mode: str, pad_to_multiple_of: int | None,
                  eval_batch_size: int | None) -> tuple[bool, int, int]:
    """(compile, bucket multiple, eval batch size) for this device: the flags where given, else the defaults.
    Buckets by default only where CUDA graphs are recorded (one per shape); elsewhere padding is wasted compute."""
    device = torch.device(device)
    compile_model = compile_by_default(device) if torch_compile is None else torch_compile
    multiple = pad_to_multiple_of or (BUCKET_MULTIPLE if compile_model and compile_mode in CUDA_GRAPH_MODES else 1)
    return compile_model, multiple, eval_batch_size or EVAL_BATCH_SIZE.get(device.type, EVAL_BATCH_SIZE["cpu"])


def compile_classifier(model: torch.nn.Module, mode: str, fall_back_to_eager: bool) -> None:
    """torch.compile the model's forward in place: the same module, so its state_dict keys, checkpoints and saved
    model are unchanged (a `torch.compile(model)` wrapper prefixes them with `_orig_mod.`; `Module.compile()` left a
    plain model eager with torch 2.13). Dynamic shapes: one graph for every batch size and length in training, one in
    evaluation. Static shapes would compile once per (batch, length) bucket, and each compile of a bert-base forward
    and backward takes seconds to a minute: more than a short run trains. A CUDA-graph mode records its graphs per
    shape (cheaply): that is what the buckets bound.

    `fall_back_to_eager` (compiling by default, not asked for): where compiling fails on a user's machine (no working
    Triton or C++ compiler, an op inductor cannot lower), dynamo warns and runs that code eagerly instead of stopping
    the run. Asked for with --torch_compile, a failure stops it."""
    torch._dynamo.config.suppress_errors = fall_back_to_eager
    logger.info(f"Compiling the model's forward with torch.compile (mode {mode}): the first training and evaluation "
                "steps take longer; --no-torch_compile runs eager")
    model.forward = torch.compile(model.forward, mode=None if mode == "default" else mode, dynamic=True)


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far: dynamo and inductor at each graph's first call (forward and
    the joint graph), plus each backward graph, which is compiled at its first backward."""
    from torch._dynamo.utils import compilation_time_metrics

    phases = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
    return round(sum(sum(compilation_time_metrics.get(phase, [])) for phase in phases), 3)


def prefer_fast_attention(device) -> None:
    """On a GPU, keep scaled-dot-product attention off the cuDNN backend. PyTorch >= 2.11 prefers cuDNN for bf16 with
    a padding mask on Hopper, and cuDNN builds an execution plan for every new (batch, length) shape, tens to hundreds
    of ms each: with dynamic padding nearly every batch is a new shape, which made bf16 slower than fp32. The
    memory-efficient and flash kernels need no plan (see the README's GPUs section)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
