"""Weight-decay groups by module type and rank, the pad-token fix, max length, and the four metrics."""

import pytest
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification)

from metrics import classification_metrics, format_report, task_for
from model import load_classifier, load_tokenizer, no_decay_parameter_names, parameter_groups, resolve_max_length


def bert():
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32))


def test_bert_no_decay_is_exactly_biases_and_layernorms():
    names = no_decay_parameter_names(bert())
    per_layer = {f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in (
        "attention.self.query.bias", "attention.self.key.bias", "attention.self.value.bias",
        "attention.output.dense.bias", "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
        "intermediate.dense.bias", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias")}
    assert names == per_layer | {"bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias",
                                 "bert.pooler.dense.bias", "classifier.bias"}


def test_gpt2_norms_ln_1_ln_2_ln_f_are_not_decayed():
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2))
    names = no_decay_parameter_names(model)
    per_layer = {f"transformer.h.{i}.{p}" for i in range(2) for p in (
        "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.bias", "attn.c_proj.bias",
        "mlp.c_fc.bias", "mlp.c_proj.bias")}
    assert names == per_layer | {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    decay = {n for n, _ in model.named_parameters()} - names
    assert decay == {"transformer.wte.weight", "transformer.wpe.weight", "score.weight"} | {
        f"transformer.h.{i}.{p}.weight" for i in range(2) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_distilbert_groups_count_every_parameter_once():
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2,
                                                                 hidden_dim=32))
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    # per layer: 6 linear weights decayed; 6 biases + 2 norms x 2 not; plus embeddings, heads and their norm
    assert (len(decay["params"]), len(no_decay["params"])) == (2 * 6 + 2 + 2, 2 * 10 + 2 + 2)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_gpt2_tokenizer_pads_with_eos_and_the_model_knows(tiny_gpt2, caplog):
    with caplog.at_level("INFO"):
        tokenizer = load_tokenizer(str(tiny_gpt2))
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 50256
    assert "no pad token: padding with its eos token" in caplog.text
    model = load_classifier(str(tiny_gpt2), ["neg", "pos"], tokenizer, task_for(None))
    assert model.config.pad_token_id == 50256
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}


def test_missing_model_path_is_one_line(tmp_path):
    with pytest.raises(OSError, match="--model_name_or_path .*nope: cannot load it") as error:
        load_tokenizer(str(tmp_path / "nope"))
    assert "\n" not in str(error.value)


def test_max_length_defaults_to_model_limit_capped_at_512_and_clamps(minilm_dir, gpt2_tokenizer_dir, caplog):
    bert_tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert resolve_max_length(None, bert_tokenizer, BertConfig(max_position_embeddings=512)) == 512
    assert resolve_max_length(None, bert_tokenizer, BertConfig(max_position_embeddings=128)) == 128
    gpt2_tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    assert resolve_max_length(None, gpt2_tokenizer, GPT2Config(n_positions=1024)) == 512
    assert resolve_max_length(800, gpt2_tokenizer, GPT2Config(n_positions=1024)) == 800
    with caplog.at_level("WARNING"):
        assert resolve_max_length(4096, bert_tokenizer, BertConfig(max_position_embeddings=512)) == 512
    assert "above the model's limit of 512" in caplog.text


def test_binary_metrics_match_hand_computed_values():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    predictions = [1, 1, 0, 0, 1, 0, 1, 0]  # tp=3, fn=1, fp=1, tn=3
    result = classification_metrics(labels, predictions, ["neg", "pos"])
    assert result == pytest.approx({"accuracy": 6 / 8, "precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4})
    assert format_report(result) == "Accuracy: 0.7500\nF1-Score: 0.7500\nPrecision: 0.7500\nRecall: 0.7500"


def test_three_class_metrics_are_macro_with_per_class_figures():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    result = classification_metrics(labels, predictions, ["a", "b", "c"])
    # per class precision a=1/2 b=2/3 c=1; recall a=1/2 b=1 c=1/2; f1 a=1/2 b=4/5 c=2/3
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert result["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert result["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
