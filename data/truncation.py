"""Token ids for texts longer than --max_length: keep the head (the recipe), the tail, or both ends (head_tail).

Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found keeping the first 128 and the last 382 tokens
of long IMDB reviews best: reviews often end with the verdict. The tokenizer's own special tokens ([CLS] ... [SEP] for
BERT, none for GPT-2) stay where its template puts them; only the text's tokens in between are cut.
"""

KEEP_CHOICES = ("head", "tail", "head_tail")


def special_token_counts(tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after one text ((1, 1) for BERT, (0, 0) for GPT-2)."""
    with_specials = tokenizer("a")["input_ids"]
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    for before in range(len(with_specials) - len(content) + 1):
        if with_specials[before : before + len(content)] == content:
            return before, len(with_specials) - before - len(content)
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell where its special tokens go around a text")


def check_head_tokens(keep: str, head_tokens: int, max_length: int, tokenizer) -> None:
    """head_tail needs room for a tail: --head_tokens below the text tokens that fit in --max_length."""
    if head_tokens < 0:
        raise ValueError(f"--head_tokens must be >= 0, got {head_tokens}")
    budget = max_length - sum(special_token_counts(tokenizer))
    if keep == "head_tail" and head_tokens >= budget:
        raise ValueError(f"--head_tokens {head_tokens} leaves no room for the tail: --max_length {max_length} holds "
                         f"{budget} text tokens; pass a smaller --head_tokens")


def kept_positions(length: int, max_length: int, keep: str, head_tokens: int, before: int, after: int) -> range | list:
    """The positions of a `length`-token encoding (special tokens included) that survive truncation to max_length."""
    if length <= max_length:
        return range(length)
    text_end = length - after  # text tokens are positions before .. text_end - 1
    budget = max_length - before - after
    if keep == "head":
        text = range(before, before + budget)
    elif keep == "tail":
        text = range(text_end - budget, text_end)
    else:
        head = min(head_tokens, budget)
        text = [*range(before, before + head), *range(text_end - (budget - head), text_end)]
    return [*range(before), *text, *range(text_end, length)]


def encode(texts: list[str], tokenizer, max_length: int, keep: str = "head", head_tokens: int = 128) -> dict:
    """The tokenizer's fields (input_ids, attention_mask, token_type_ids...) for each text, at most max_length long,
    unpadded. `head` gives exactly what `tokenizer(texts, truncation=True, max_length=...)` gives."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if keep == "head":  # the tokenizer truncates the same way, without encoding the whole text
        return dict(tokenizer(texts, truncation=True, max_length=max_length))
    before, after = special_token_counts(tokenizer)
    full = tokenizer(texts, truncation=False, verbose=False)  # verbose=False: no "longer than the maximum" warning
    encoded = {field: [] for field in full.keys()}
    for row in range(len(texts)):
        positions = kept_positions(len(full["input_ids"][row]), max_length, keep, head_tokens, before, after)
        for field, values in full.items():
            encoded[field].append([values[row][p] for p in positions])
    return encoded
