"""Model: tokenizer and classifier loading (with the pad-token fix and the ready-made attention mask), the max length,
weight-decay groups, and the speed settings (compiling, length buckets: model/compiling.py)."""

import functools
import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function, causal_mask_function

from model.compiling import (BUCKET_MULTIPLE, COMPILE_MODES, compile_classifier, compile_seconds, prefer_fast_attention,
                             resolve_speed)

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512  # the recipe's cap, also for models that allow more (GPT-2: 1024)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)
# The dtype the matrix products run in for each --mixed_precision choice (train.py and predict.py).
AUTOCAST_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_tokenizer(name: str):
    """The model's tokenizer, prepared for classification (prepare_tokenizer)."""
    return prepare_tokenizer(_from_pretrained(AutoTokenizer, name), f"--model_name_or_path {name}")


def prepare_tokenizer(tokenizer, source: str):
    """A tokenizer without a pad token (GPT-2) pads with its end-of-sequence token; every tokenizer pads and truncates
    on the right (train.py and predict.py; saved with the tokenizer, so pipeline() does the same).

    Padding on the right: the model computes position ids 0..n-1 whatever the mask, so a left-padded row's tokens would
    get shifted positions (GPT-2, BERT: another absolute position embedding; ModernBERT pools position 0, a pad), and
    its logits would differ from the same row alone. Decoders pool their last non-pad token on either side. Truncating
    on the right: --truncation_keep head means the head (a tokenizer made for generation may cut on the left)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{source}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(f"The tokenizer has no pad token: padding with its eos token {tokenizer.eos_token!r}")
    for side in ("padding_side", "truncation_side"):
        if getattr(tokenizer, side) != "right":
            logger.info(f"The tokenizer's {side} is {getattr(tokenizer, side)}: right instead, so that each row keeps "
                        "its positions and --truncation_keep its meaning")
            setattr(tokenizer, side, "right")
    return tokenizer


def load_classifier(name: str, label_names: list[str], tokenizer, task, ignore_mismatched_sizes: bool = False):
    """A sequence classifier with the task's outputs (one per class or label; one for regression) and its
    problem_type; the labels' names go into its config for pipelines. A model already fine-tuned for another number
    of outputs is refused unless its head may be replaced."""
    config = _from_pretrained(AutoConfig, name)
    trained_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    outputs = task.num_outputs(label_names)
    if trained_head and config.num_labels != outputs and not ignore_mismatched_sizes:
        raise ValueError(
            f"--model_name_or_path {name}: its classification head has {config.num_labels} outputs "
            f"({', '.join(map(str, config.id2label.values()))}) but the data needs {outputs} "
            f"({', '.join(label_names[:5])}{', ...' if len(label_names) > 5 else ''}); pass --ignore_mismatched_sizes "
            "to train a new head"
        )
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        name,
        num_labels=outputs,
        problem_type=task.problem_type,  # pipeline() applies softmax, sigmoid or nothing by it
        id2label=dict(enumerate(label_names)),
        label2id={label: i for i, label in enumerate(label_names)},
        ignore_mismatched_sizes=ignore_mismatched_sizes,
    )
    # GPT-2-style classifiers read the last non-pad token, so the model must know which id is padding.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# Model types whose forward turns the 2D padding mask into its attention mask with transformers' create_causal_mask
# (GPT-2; BERT-style models with config.is_decoder) or create_bidirectional_mask (BERT-style encoders), from the mask
# alone: no sliding window, chunks or packed sequences. For them the mask prepare_attention_masks builds is the one the
# model builds itself (tests/test_host_sync.py compares the logits of each).
CAUSAL_TYPES = ("gpt2",)
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")


def prepare_attention_masks(model: nn.Module):
    """Hand the model's forward the 4D attention mask it would build from the batch's 2D padding mask, built on the
    device without reading it. Given a 2D mask, transformers first asks whether it has any padding at all
    (`padding_mask.all()` in a Python `if`: masking_utils' `_ignore_bidirectional_mask_sdpa`, GPT-2's
    `_ignore_causal_mask_sdpa`) so as to leave an all-ones mask out: a host sync in every forward on a GPU. A 4D mask
    it takes as it is, and this one is the mask it would have built, so a padded batch's results are bit for bit the
    same. A batch without padding gets an all-True mask instead of none: the same numbers on the CPU, 1.4-1.9% slower
    there for such a batch (results/host-sync-issue19.txt), and on a GPU no flash kernel for it. For eager forwards
    only: a compiled forward traces transformers' check instead of running it (no read), and builds the mask inside its
    graph, so train.py and predict.py prepare the masks only when they do not compile.

    For SDPA attention (the default) and the model types above; any other model keeps transformers' own path. A
    forward pre-hook on the model itself: the batches, the saved model and `pipeline()` are unchanged. Returns the
    hook's handle (`.remove()` undoes it), or None when the model is left as it is."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in CAUSAL_TYPES or (model_type in ENCODER_TYPES and getattr(config, "is_decoder", False)):
        mask_function = causal_mask_function
    elif model_type in ENCODER_TYPES:
        mask_function = bidirectional_mask_function
    else:
        return None
    return model.register_forward_pre_hook(functools.partial(_full_attention_mask, mask_function), with_kwargs=True)


def _full_attention_mask(mask_function, model, args, kwargs):
    padding = kwargs.get("attention_mask")
    if padding is None or padding.ndim != 2 or model.config._attn_implementation != "sdpa":
        return None  # no mask (nothing to read), a mask already 4D, or an attention whose mask we do not build
    rows, length = padding.shape
    mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](
        batch_size=rows, q_length=length, kv_length=length, mask_function=mask_function,
        attention_mask=padding.to(torch.bool), allow_is_causal_skip=False, allow_is_bidirectional_skip=False,
        config=model.config, device=padding.device)
    return args, kwargs | {"attention_mask": mask}


def name_fsdp_blocks(model: nn.Module) -> str | None:
    """FSDP (TRANSFORMER_BASED_WRAP without a class named, as configs/fsdp.yaml) wraps what the model's
    `_no_split_modules` names. DistilBERT, ELECTRA and DeBERTa-v2 name nothing, so nothing would be wrapped but the
    whole model: for them, the class of the items of the model's longest ModuleList (its layers). Returns the class
    named, or None when the model names its own."""
    if getattr(model, "_no_split_modules", None):
        return None
    layers = max((m for m in model.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
    if not layers:
        return None
    model._no_split_modules = [type(layers[0]).__name__]
    return model._no_split_modules[0]


def resolve_max_length(requested: int | None, tokenizer, config) -> int:
    """--max_length, or the model's own limit capped at 512; a request above the model's limit is clamped."""
    positions = position_limit(config)
    limit = min(tokenizer.model_max_length, positions or tokenizer.model_max_length)
    if requested is None:
        return min(limit, DEFAULT_MAX_LENGTH)
    return clamped_max_length(requested, limit)


def clamped_max_length(requested: int, limit: int | None) -> int:
    if limit is not None and requested > limit:
        logger.warning(f"--max_length {requested} is above the model's limit of {limit} tokens: using {limit}")
        return limit
    return requested


def position_limit(config) -> int | None:
    """The most tokens the model's position embeddings take (None: no such limit)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases and normalization weights, found by tensor rank and module type (GPT-2 names its norms ln_1, ln_f...)."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()
        for param_name, param in module.named_parameters(recurse=False):
            if is_norm or param.ndim < 2:
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on every trainable matrix, none on biases and norms."""
    no_decay = no_decay_parameter_names(model)
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    return [
        {"params": [p for n, p in trainable if n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n in no_decay], "weight_decay": 0.0},
    ]


def _from_pretrained(auto_class, name: str, **kwargs):
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:
        raise OSError(
            f"--model_name_or_path {name}: cannot load it ({str(error).splitlines()[0]}); pass a local model directory "
            "(e.g. ../shared/models/all-MiniLM-L6-v2) or a Hub name with the network reachable"
        ) from error
