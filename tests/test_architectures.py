"""An architecture matrix (issue 22): tiny from-config models of ten families, each through what the loop relies on.
Encoders (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT, ELECTRA) use the MiniLM tokenizer; decoders (GPT-2,
Llama, Qwen2, Mistral) the GPT-2 tokenizer, which has no pad token. Per family: one train.py run with a checkpoint and
one resume from it (exact), predict.py and pipeline() on the result; weight-decay groups by parameter name; padded
batches against rows alone; the MFU FLOP formula against torch's FLOP counter."""

import json
import re
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import predict as predict_module
from conftest import ROOT, read_outputs, run_in_process, run_train, save_tiny
from data import load_splits, select_subset
from metrics.tasks import task_for
from metrics.throughput import training_flop_rates
from model import load_classifier, load_tokenizer, name_fsdp_blocks, parameter_groups, prepare_attention_masks

H, LAYERS, HEADS, FFN = 32, 2, 2, 64
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
BERT_SIZES = {"hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": FFN}
# Llama-style decoders: one K/V head for two query heads (GQA), so the K/V projections are narrower than Q.
ROPE_SIZES = BERT_SIZES | {"num_key_value_heads": 1, "max_position_embeddings": 128}

# family: (config class, encoder?, the family's own names for tiny sizes; vocabulary and special ids come from the
# tokenizer). Each family's quirk is kept where it is cheap: ELECTRA's embedding projection, DeBERTa-v3's relative
# attention (shared keys, buckets), ModernBERT's and Mistral's sliding windows shorter than the rows, Qwen2's QKV
# biases.
FAMILIES = {
    "bert": ("BertConfig", True, BERT_SIZES | NO_DROPOUT),
    # RoBERTa's positions start after its pad id: room for 64 tokens.
    "roberta": ("RobertaConfig", True, BERT_SIZES | NO_DROPOUT | {"max_position_embeddings": 66, "type_vocab_size": 1}),
    "distilbert": ("DistilBertConfig", True, {"dim": H, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": FFN,
                                              "dropout": 0.0, "attention_dropout": 0.0, "seq_classif_dropout": 0.0}),
    "deberta-v2": ("DebertaV2Config", True, BERT_SIZES | NO_DROPOUT | {
        "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
        "max_relative_positions": 64, "share_att_key": True, "norm_rel_ebd": "layer_norm",
        "position_biased_input": False, "pooler_dropout": 0.0}),
    "modernbert": ("ModernBertConfig", True, BERT_SIZES | {"global_attn_every_n_layers": 2, "local_attention": 16}),
    "electra": ("ElectraConfig", True, BERT_SIZES | NO_DROPOUT | {"embedding_size": 16}),
    "gpt2": ("GPT2Config", False, {"n_embd": H, "n_layer": LAYERS, "n_head": HEADS, "n_inner": FFN, "resid_pdrop": 0.0,
                                   "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}),
    "llama": ("LlamaConfig", False, ROPE_SIZES),
    # transformers 5 reloads the GPT-2 tokenizer saved with this one as a Qwen2Tokenizer (by model type, whatever
    # tokenizer_config.json says): the same files, digits split one by one. train, predict and pipeline all do.
    "qwen2": ("Qwen2Config", False, ROPE_SIZES),
    "mistral": ("MistralConfig", False, ROPE_SIZES | {"sliding_window": 16}),
}
DECODERS = [name for name, (_, encoder, _) in FAMILIES.items() if not encoder]
# Llama with the GPT-2 files as a plain tokenizers-backed tokenizer (Llama 3's tokenizer_config.json names
# PreTrainedTokenizerFast): another tokenizer class through the loop, the same ids. The others: AutoTokenizer's choice.
TOKENIZER_CLASSES = {"llama": "PreTrainedTokenizerFast"}
LABELS = ["neg", "pos"]
TEXTS = ["A wonderful, moving film.", "Dull and far too long; I left after an hour.", "Fine."]


@pytest.fixture(scope="module")
def tiny_models(minilm_dir, gpt2_tokenizer_dir, tmp_path_factory):
    """family -> a saved tiny model with its tokenizer, built on first use (a family whose config class this
    transformers lacks is skipped, naming it)."""
    built = {}

    def get(family: str):
        if family not in built:
            class_name, encoder, sizes = FAMILIES[family]
            config_class = getattr(transformers, class_name, None)
            if config_class is None:
                pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
            tokenizer_class = getattr(transformers, TOKENIZER_CLASSES.get(family, "AutoTokenizer"))
            tokenizer = tokenizer_class.from_pretrained(minilm_dir if encoder else gpt2_tokenizer_dir)
            special = ({"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                        "eos_token_id": tokenizer.sep_token_id, "cls_token_id": tokenizer.cls_token_id,
                        "sep_token_id": tokenizer.sep_token_id} if encoder else
                       {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(
                config_class(vocab_size=len(tokenizer), **special, **sizes))
            built[family] = save_tiny(model, tokenizer, tmp_path_factory.mktemp(f"tiny_{family}"))
        return built[family]

    return get


# --- 1. train, checkpoint, resume, predict, pipeline: one run and one resume per family ----------------------------

# 32 rows in batches of 4, 2 epochs: 16 steps, a checkpoint every 6. The resume starts at step 6, mid-epoch 1, so it
# crosses an epoch's end and its evaluation.
RUN_ARGS = ["--train_samples", 32, "--eval_samples", 16, "--per_device_train_batch_size", 4, "--num_train_epochs", 2,
            "--learning_rate", 1e-3, "--max_length", 32, "--logging_steps", 1]


@pytest.fixture(scope="module")
def runs(tiny_models, small_imdb, tmp_path_factory):
    """family -> (the uninterrupted run's output_dir, the output_dir of its resume from checkpoints/step_6)."""
    done = {}

    def get(family: str):
        if family not in done:
            args = ["--model_name_or_path", tiny_models(family), "--dataset_name", small_imdb, *RUN_ARGS]
            full, resumed = tmp_path_factory.mktemp(f"run_{family}"), tmp_path_factory.mktemp(f"resumed_{family}")
            run_train(args + ["--output_dir", full, "--checkpointing_steps", 6])
            result = run_train(args + ["--output_dir", resumed,
                                       "--resume_from_checkpoint", full / "checkpoints" / "step_6"])
            assert f"Resumed from {full / 'checkpoints' / 'step_6'}" in result.stderr
            done[family] = full, resumed
        return done[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_a_resume_from_a_checkpoint_ends_bit_identical(family, runs):
    full, resumed = runs(family)
    (metrics, log), (resumed_metrics, resumed_log) = read_outputs(full), read_outputs(resumed)
    assert metrics["config"]["max_train_steps"] == 16 and [r["step"] for r in log] == list(range(1, 17))
    assert [r["step"] for r in resumed_log] == list(range(7, 17))  # the resume's own log: after the checkpoint
    assert [(r["loss"], r["learning_rate"]) for r in resumed_log] == [(r["loss"], r["learning_rate"]) for r in log[6:]]
    assert resumed_metrics["after"] == metrics["after"] and resumed_metrics["after"]["rows"] == 16
    weights, resumed_weights = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[name], resumed_weights[name]) for name in weights)
    initial = load_file(full / "checkpoints" / "step_6" / "model.safetensors")
    assert any(not torch.equal(weights[name], initial[name]) for name in weights)  # it trained after step 6


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_on_the_eval_rows_gives_trains_after(family, runs, small_imdb, tmp_path):
    """predict.py --evaluate on train.py's 16 eval rows: the same prediction per row (eval_predictions.jsonl), the same
    four metrics, and its probabilities give the same eval loss."""
    full, _ = runs(family)
    after = read_outputs(full)[0]["after"]
    splits, _ = load_splits(str(small_imdb))
    rows = select_subset(splits["eval"], 16, 42)  # train.py's pick (--subset_seed 42)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": text, "label": label}) + "\n"
                                                 for text, label in zip(rows["text"], rows["label"])))
    result = run_in_process(predict_module, [full, "--input_file", tmp_path / "eval.jsonl", "--evaluate",
                                             "--output_file", tmp_path / "out.jsonl"])
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in (full / "eval_predictions.jsonl").read_text().splitlines()]
    assert [LABELS[r["prediction"]] for r in trained] == [r["label"] for r in predicted]
    assert [LABELS[r["label"]] for r in trained] == [r["true_label"] for r in predicted]
    assert result.stdout.splitlines() == [f"{title}: {after[key]:.4f}" for title, key in (
        ("Accuracy", "accuracy"), ("F1-Score", "f1"), ("Precision", "precision"), ("Recall", "recall"))]
    loss = -sum(torch.tensor(r["probabilities"][r["true_label"]]).log() for r in predicted) / len(predicted)
    assert loss.item() == pytest.approx(after["loss"], rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_loads_the_output_and_agrees_with_predict(family, runs):
    full, _ = runs(family)
    assert json.loads((full / "tokenizer_config.json").read_text()).get("padding_side", "right") == "right"
    result = run_in_process(predict_module, [full, *[arg for text in TEXTS for arg in ("--text", text)]])
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = [json.loads(line) for line in result.stdout.splitlines()]
    answers = pipeline("text-classification", model=str(full))(TEXTS, batch_size=len(TEXTS))  # one padded batch
    assert [a["label"] for a in answers] == [p["label"] for p in predicted]
    assert [a["score"] for a in answers] == pytest.approx([p["score"] for p in predicted], abs=1e-5)


# --- 2. weight decay: by parameter name ----------------------------------------------------------------------------

# Biases, and the scales of the norms whatever a family calls them: LayerNorm, sa_layer_norm, output_layer_norm
# (DistilBERT), norm, mlp_norm, final_norm (ModernBERT), ln_1, ln_f (GPT-2), input_layernorm, post_attention_layernorm
# and norm (RMSNorm: Llama, Qwen2, Mistral).
NO_DECAY = re.compile(r"\.bias$|norm\.weight$|\.ln_\w+\.weight$", re.IGNORECASE)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_weight_decay_on_exactly_the_biases_and_norms(family, tiny_models):
    tokenizer = load_tokenizer(tiny_models(family))
    model = load_classifier(tiny_models(family), LABELS, tokenizer, task_for(None))
    names = {id(param): name for name, param in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in parameter_groups(model, 0.01))
    expected = {name for name in names.values() if NO_DECAY.search(name)}
    assert no_decay == expected and decay == set(names.values()) - expected
    assert any("norm" in name.lower() or ".ln_" in name for name in no_decay)  # the rule found this family's norms
    # Embeddings, attention, MLP and the classifier's matrices decay (names end in "weight"; norms' scales do not).
    assert decay and all(name.endswith("weight") and model.get_parameter(name).ndim >= 2 for name in decay)
    assert any("embed" in name or "wte" in name for name in decay)
    assert any(name.startswith(("classifier", "score")) for name in decay)


# --- 3. padding: right, whatever side the tokenizer came with --------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_batch_gives_each_rows_own_logits_whatever_side_the_tokenizer_pads(family, side, tiny_models,
                                                                                     tmp_path, caplog):
    """Through train.py's and predict.py's functions (load_tokenizer: pad token, padding side; load_classifier with a
    task; prepare_attention_masks where it applies), a padded batch gives the logits each row gets alone, to 1e-5.

    Decoders pool their last non-pad token (on either side), but every family here computes position ids 0..n-1 from
    the start of the row whatever the mask: left padding shifts a row's positions. GPT-2 and the encoders then change
    (absolute positions; encoders also pool position 0, a pad); RoPE decoders do not (their scores depend on relative
    positions only). So the tokenizer always pads on the right (model.prepare_tokenizer, saved with it for pipeline()),
    rather than passing position ids from the mask, which would still leave the encoders' position-0 pooling wrong."""
    path = tmp_path / "model"
    shutil.copytree(tiny_models(family), path)
    AutoTokenizer.from_pretrained(path, padding_side=side, truncation_side=side).save_pretrained(path)  # as some
    assert json.loads((path / "tokenizer_config.json").read_text())["padding_side"] == side  # Hub tokenizers come

    with caplog.at_level("INFO", logger="model"):
        tokenizer = load_tokenizer(str(path))
    assert tokenizer.padding_side == tokenizer.truncation_side == "right" and tokenizer.pad_token is not None
    assert ("padding_side is left: right instead" in caplog.text) == (side == "left")
    assert ("truncation_side is left: right instead" in caplog.text) == (side == "left")
    model = load_classifier(str(path), LABELS, tokenizer, task_for(None)).eval()
    prepare_attention_masks(model)
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in TEXTS])
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        assert (batch["attention_mask"] == 0).any()  # padded
        torch.testing.assert_close(model(**batch).logits, alone, atol=1e-5, rtol=0)
        if side == "left":  # why: the same batch padded on the left
            tokenizer.padding_side = "left"
            shift = (model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits - alone).abs().max().item()
            assert (shift < 1e-5) == (family in ("llama", "qwen2", "mistral")), shift


def test_decoders_without_a_pad_token_pad_with_eos(tiny_models, caplog):
    for family in DECODERS:
        with caplog.at_level("INFO", logger="model"):
            tokenizer = load_tokenizer(str(tiny_models(family)))
        model = load_classifier(str(tiny_models(family)), LABELS, tokenizer, task_for(None))
        assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.eos_token_id == 50256
    assert caplog.text.count("no pad token: padding with its eos token '<|endoftext|>'") == len(DECODERS)


# --- 4. the FLOPs MFU counts --------------------------------------------------------------------------------------

# Names of the weights applied once per row (the head on the pooled first token) rather than once per token. The
# decoders' `score` runs on every token before the last one is picked: per token, as counted.
HEAD = re.compile(r"^(bert\.pooler|pooler|classifier|pre_classifier|head)\.")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_flop_rates_match_torchs_flop_counter(family, tiny_models):
    """training_flop_rates against FlopCounterMode on one forward + backward of 2 rows x 24 tokens, no padding (eager
    attention: the counter does not see the CPU's fused SDPA kernel). The formula counts matrix products only, as
    the counter does (biases, norms, activations, softmax and embedding lookups are elementwise work for neither).

    It must account for the count exactly, but for two known terms: the head on the pooled vector (BERT's pooler and
    classifier...), counted per token but run once per row (6 x its weights x (tokens - rows) too many); DeBERTa-v2's
    projections of its relative embeddings, run once per forward and layer (6 x 2 x 2 span x hidden^2 x layers: too
    few). The tolerance MFU gets from them on these tiny models: 7% (the head is ~6% of a 32-wide model's matrices,
    ~0.7% of bert-base's; DeBERTa's projections ~10% of this 48-token batch, ~3.5% of deberta-v3-base's at 8 x 256)."""
    rows, length = 2, 24
    tokenizer = load_tokenizer(str(tiny_models(family)))
    model = load_classifier(str(tiny_models(family)), LABELS, tokenizer, task_for(None)).train()
    model.set_attn_implementation("eager")
    ids = torch.randint(1000, 2000, (rows, length), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    counted = counter.get_total_flops()

    per_token, per_pair = training_flop_rates(model)
    formula = per_token * rows * length + per_pair * rows * length**2
    head = sum(p.numel() for name, p in model.named_parameters() if HEAD.match(name) and p.ndim >= 2)
    assert (head > 0) == (family not in DECODERS)
    known = 6 * head * (rows * length - rows)
    if family == "deberta-v2":  # query and key projections of 2 x span relative embeddings, in each layer
        config = model.config
        known -= 6 * 2 * (2 * config.position_buckets) * config.hidden_size**2 * config.num_hidden_layers
    assert formula - known == counted, f"formula {formula:,}, known {known:,}, counted {counted:,}"
    assert formula == pytest.approx(counted, rel=0.07)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shipped_fsdp_config_wraps_each_familys_own_blocks(family, tiny_models):
    """configs/fsdp.yaml names no layer class: accelerate's FSDP2 wrap policy then wraps what the model's
    `_no_split_modules` names (its transformer blocks), or, for a model that names none, what train.py names for it
    (model.name_fsdp_blocks: its layers' class). (Resolved on the CPU: sharding itself needs GPUs and was not run.)"""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    settings = yaml.safe_load((ROOT / "configs" / "fsdp.yaml").read_text())["fsdp_config"]
    assert "fsdp_transformer_layer_cls_to_wrap" not in settings
    plugin = FullyShardedDataParallelPlugin(fsdp_version=settings["fsdp_version"],
                                            auto_wrap_policy=settings["fsdp_auto_wrap_policy"].lower(),
                                            state_dict_type=settings["fsdp_state_dict_type"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models(family))
    named = name_fsdp_blocks(model)  # what train.py does under FSDP
    assert (named is None) == (family not in ("distilbert", "deberta-v2", "electra")), named  # (those name none)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(module).__name__ for module in model.modules() if policy(module)]
    blocks = [name for name in wrapped if name in model._no_split_modules and "Embedding" not in name]
    assert set(wrapped) <= set(model._no_split_modules) and len(blocks) == LAYERS, wrapped


def test_the_model_is_saved_from_accelerates_full_state_dict(tiny_models, tmp_path):
    """save_model takes the weights from accelerator.get_state_dict (under FSDP a collective that gathers the full
    weights), not from the sharded module."""
    from training.outputs import save_model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models("llama"))
    gathered = {name: torch.full_like(tensor, 0.5) for name, tensor in model.state_dict().items()}

    class Accelerator:  # the calls save_model makes, as FSDP's would answer them
        is_main_process, save = True, staticmethod(torch.save)
        calls = []

        def wait_for_everyone(self):
            pass

        def get_state_dict(self, wrapped):
            self.calls.append(wrapped)
            return gathered

        def unwrap_model(self, wrapped):
            return wrapped

    accelerator = Accelerator()
    save_model(model, load_tokenizer(str(tiny_models("llama"))), accelerator, tmp_path)
    assert accelerator.calls == [model]
    saved = load_file(tmp_path / "model.safetensors")
    assert saved and all(torch.equal(tensor, torch.full_like(tensor, 0.5)) for tensor in saved.values())
