"""Token ids for texts longer than --max_length: keep the head (the recipe), the tail, or both ends (head_tail).

Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found keeping the first 128 and the last 382 tokens
of long IMDB reviews best: reviews often end with the verdict. The tokenizer's own special tokens ([CLS] ... [SEP] for
BERT, none for GPT-2) stay where its template puts them; only the text's tokens in between are cut.

Sentence pairs are truncated as the tokenizer does it (`truncation=True`: longest first, one token at a time from the
longer text, as run_glue does): there is no "head" or "tail" of two texts, so tail/head_tail are refused for pairs.
A tokenizer whose pair template puts nothing between the two texts (GPT-2, Qwen2: `a b`) gets a separator first
(`add_pair_separator`), so the model can tell where the first text ends.
"""

from tokenizers import processors

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
    """Room for at least one text token; head_tail needs room for a tail: --head_tokens below the text tokens that
    fit in --max_length."""
    if head_tokens < 0:
        raise ValueError(f"--head_tokens must be >= 0, got {head_tokens}")
    specials = sum(special_token_counts(tokenizer))
    budget = max_length - specials
    if budget < 1:  # BERT cannot cut below [CLS] [SEP]: it would return whole texts, or train on no text at all
        raise ValueError(f"--max_length {max_length} leaves no room for text: the tokenizer adds {specials} special "
                         f"token(s); pass --max_length {specials + 1} or more")
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


def check_pair_room(keep: str, max_length: int, tokenizer) -> None:
    """Pairs: truncated longest first (no tail of two texts), with room for a token of each text."""
    if keep != "head":
        raise ValueError(f"--truncation_keep {keep}: sentence pairs are truncated longest first, as the tokenizer does "
                         "it; pass --truncation_keep head (tail and head_tail apply to one text)")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length < specials + 2:
        raise ValueError(f"--max_length {max_length} leaves no room for the second text: the tokenizer's pair template "
                         f"adds {specials} special token(s); pass --max_length {specials + 2} or more")


def pair_separator_missing(tokenizer) -> bool:
    """True when the tokenizer's pair template puts no token between the two texts (GPT-2's `a b`)."""
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    pair = tokenizer("a", "b")["input_ids"]
    return any(pair[i : i + len(first) + len(second)] == first + second for i in range(len(pair)))


def add_pair_separator(tokenizer) -> str | None:
    """For a template with nothing between a pair's texts: its separator token (or else its end-of-text token)
    between them, in the tokenizer's own template, so training, predict.py and `pipeline` (which reload the saved
    tokenizer) encode pairs alike. The token the model sees, and GPT-2 was pretrained with `<|endoftext|>` between
    documents. Returns the token added, or None when the template already separates the texts."""
    if not pair_separator_missing(tokenizer):
        return None
    token = tokenizer.sep_token or tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    single_unchanged = tokenizer("a")["input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]
    if token is None or backend is None or not single_unchanged:
        raise ValueError(f"{type(tokenizer).__name__}: its pair template puts nothing between the two texts and no "
                         "separator could be added; pass one text (--text_column only)")
    backend.post_processor = processors.TemplateProcessing(
        single="$A", pair=f"$A:0 {token}:0 $B:1", special_tokens=[(token, tokenizer.convert_tokens_to_ids(token))])
    return token


def encode(texts: list[str], tokenizer, max_length: int, keep: str = "head", head_tokens: int = 128,
           text_pairs: list[str] | None = None) -> dict:
    """The tokenizer's fields (input_ids, attention_mask, token_type_ids...) for each text (or pair of texts), at most
    max_length long, unpadded. `head` gives exactly what `tokenizer(texts, truncation=True, max_length=...)` gives;
    pairs are always cut so (longest first)."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if keep == "head" or text_pairs is not None:  # the tokenizer truncates the same way, without encoding it all
        return dict(tokenizer(texts, text_pairs, truncation=True, max_length=max_length))
    before, after = special_token_counts(tokenizer)
    full = tokenizer(texts, truncation=False, verbose=False)  # verbose=False: no "longer than the maximum" warning
    encoded = {field: [] for field in full.keys()}
    for row in range(len(texts)):
        positions = kept_positions(len(full["input_ids"][row]), max_length, keep, head_tokens, before, after)
        for field, values in full.items():
            encoded[field].append([values[row][p] for p in positions])
    return encoded
