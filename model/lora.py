"""LoRA through peft (an optional extra): low-rank adapters on the attention (peft's default modules for the
architecture, or --lora_target_modules), the classification head trained in full (peft's SEQ_CLS task keeps
`classifier`/`score` as modules to save). The saved model is the adapter merged into a copy of the base weights, so
`pipeline` and predict.py load it as any fine-tuned model; the adapter alone goes beside it in `adapter/`."""

import warnings

import torch
from torch import nn

ADAPTER_DIR = "adapter"


def peft_problem(r: int | None) -> str | None:
    """--lora_r's check, before anything loads: peft must be installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return "needs peft: pip install peft"
    return None


def add_lora(classifier: nn.Module, r: int, alpha: float | None, dropout: float, target_modules: tuple[str, ...] | None):
    """The classifier wrapped in peft's LoRA: only the adapters and the head train. One line if peft knows no default
    modules for this architecture and none were given."""
    import peft

    # peft asks transformers' deprecated is_gradient_checkpointing (a FutureWarning per call): not the user's to fix.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    model_type = classifier.config.model_type
    if target_modules is None and model_type not in peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in classifier.named_modules()
                         if isinstance(module, nn.Linear)})
        raise ValueError(f"--lora_r: peft has no default target modules for {model_type}; pass "
                         f"--lora_target_modules, a few of its linear layers: {' '.join(linear)}")
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=r, lora_alpha=alpha if alpha is not None else 2 * r,
                             lora_dropout=dropout, target_modules=list(target_modules) if target_modules else None)
    try:
        return peft.get_peft_model(classifier, config)
    except ValueError as error:  # e.g. a target module name the model does not have
        raise ValueError(f"--lora_target_modules: {str(error).splitlines()[0]}") from None


def is_lora(model: nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def merged_state_dict(model: nn.Module) -> dict:
    """The weights of the model with its adapters merged, as merge_and_unload names and computes them (tested equal),
    on the CPU: the base weights plus each adapted layer's delta (B A x alpha / r), the trained head under the head's
    own name. The trained model is left as it is (training goes on; merging and unmerging in place would not give the
    same floats back), and no second copy of it is made on the device."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        state[name] = tensor.detach().to("cpu", copy=True)
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    state[f"{name}.weight"] += module.get_delta_weight(adapter).to("cpu", state[f"{name}.weight"].dtype)
    return state


def lora_summary(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"LoRA: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
