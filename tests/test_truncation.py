"""--truncation_keep: which tokens of a long text survive, with the tokenizer's special tokens in place."""

import pytest
from transformers import AutoTokenizer

from data import check_head_tokens, encode, tokenize
from data.truncation import special_token_counts

TEXT = "the plot starts slow and the acting is flat, but the ending is great"  # 15 BERT / 15 GPT-2 text tokens
SHORT = "a fine film"

# max_length 8, head_tokens 3. BERT: [CLS]=101 ... [SEP]=102 around 6 text tokens; GPT-2: no special tokens, 8 text tokens.
EXPECTED = {
    "bert": {
        "head": [101, 1996, 5436, 4627, 4030, 1998, 1996, 102],  # [CLS] the plot starts slow and the [SEP]
        "tail": [101, 1010, 2021, 1996, 4566, 2003, 2307, 102],  # [CLS] , but the ending is great [SEP]
        "head_tail": [101, 1996, 5436, 4627, 4566, 2003, 2307, 102],  # [CLS] the plot starts | ending is great [SEP]
        "short": [101, 1037, 2986, 2143, 102],
    },
    "gpt2": {
        "head": [1169, 7110, 4940, 3105, 290, 262, 7205, 318],  # the plot starts slow and the acting is
        "tail": [318, 6228, 11, 475, 262, 7464, 318, 1049],  # is flat, but the ending is great
        "head_tail": [1169, 7110, 4940, 475, 262, 7464, 318, 1049],  # the plot starts | but the ending is great
        "short": [64, 3734, 2646],
    },
}


@pytest.fixture(params=["bert", "gpt2"])
def tokenizer_case(request, minilm_dir, gpt2_tokenizer_dir):
    path = minilm_dir if request.param == "bert" else gpt2_tokenizer_dir
    return AutoTokenizer.from_pretrained(path), EXPECTED[request.param]


@pytest.mark.parametrize("keep", ["head", "tail", "head_tail"])
def test_exact_token_ids_kept_for_a_long_and_a_short_text(tokenizer_case, keep):
    tokenizer, expected = tokenizer_case
    encoded = encode([TEXT, SHORT], tokenizer, max_length=8, keep=keep, head_tokens=3)
    assert encoded["input_ids"] == [expected[keep], expected["short"]]
    assert encoded["attention_mask"] == [[1] * 8, [1] * len(expected["short"])]


def test_head_is_the_tokenizers_own_truncation_and_tail_its_left_truncation(tokenizer_case, small_imdb):
    import pandas as pd

    tokenizer, _ = tokenizer_case
    texts = pd.read_parquet(small_imdb / "test.parquet")["text"].tolist()
    assert encode(texts, tokenizer, 128, "head")["input_ids"] == tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    tokenizer.truncation_side = "left"
    assert encode(texts, tokenizer, 128, "tail")["input_ids"] == tokenizer(texts, truncation=True, max_length=128)["input_ids"]


def test_head_tail_on_real_reviews_keeps_both_ends_and_every_field_aligned(minilm_dir, small_imdb):
    import pandas as pd

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    texts = pd.read_parquet(small_imdb / "test.parquet")["text"].tolist()
    full = tokenizer(texts, verbose=False)["input_ids"]
    kept = encode(texts, tokenizer, 64, "head_tail", head_tokens=20)
    assert special_token_counts(tokenizer) == (1, 1)
    for ids, types, whole in zip(kept["input_ids"], kept["token_type_ids"], full):
        assert len(ids) == min(len(whole), 64) and len(types) == len(ids)
        if len(whole) > 64:  # [CLS] + first 20 text tokens + last 42 text tokens + [SEP]
            assert ids == whole[:21] + whole[-43:]
        else:
            assert ids == whole


def test_tokenize_applies_the_choice_to_a_dataset(minilm_dir):
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rows = Dataset.from_dict({"text": [TEXT, SHORT], "label": [1, 0]})
    tokens = tokenize(rows, tokenizer, 8, keep="head_tail", head_tokens=3)
    assert tokens["input_ids"][:] == [EXPECTED["bert"]["head_tail"], EXPECTED["bert"]["short"]]
    assert tokens["labels"][:] == [1, 0]


def test_head_tokens_must_leave_room_for_the_tail(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    check_head_tokens("head_tail", 128, 512, tokenizer)  # Sun et al.: 128 + 382 + [CLS] + [SEP]
    check_head_tokens("head", 600, 512, tokenizer)  # unused without head_tail
    with pytest.raises(ValueError, match=r"--head_tokens 128 leaves no room for the tail: --max_length 96 holds 94 "
                                         r"text tokens; pass a smaller --head_tokens"):
        check_head_tokens("head_tail", 128, 96, tokenizer)
    with pytest.raises(ValueError, match="--head_tokens must be >= 0"):
        check_head_tokens("head_tail", -1, 96, tokenizer)
