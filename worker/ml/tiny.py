"""Tiny causal language models of real architectures, built offline in a second or two.

Tests, the benchmark and `tunelab models make-tiny NAME` use them: random weights in a
real architecture (Llama, Qwen2, Mistral) plus a byte-level BPE tokenizer trained on the
spot, with a ChatML chat template. They load through exactly the path a downloaded model
takes (`from_pretrained` on a directory), so nothing needs the internet.

    make_tiny_model(models_dir / "tiny-llama")                 # tests: ~190k parameters
    make_tiny_model(path, hidden_size=256, num_layers=4, vocab_size=4096)   # benchmark
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
ARCHITECTURES = ("llama", "qwen2", "mistral")

# Everyday words the tokenizer is trained on and the benchmark's generated data is made of.
WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "if",
    "then",
    "so",
    "because",
    "while",
    "when",
    "where",
    "what",
    "which",
    "who",
    "how",
    "why",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "do",
    "does",
    "did",
    "will",
    "would",
    "can",
    "could",
    "should",
    "may",
    "might",
    "must",
    "shall",
    "not",
    "no",
    "yes",
    "all",
    "some",
    "any",
    "each",
    "every",
    "few",
    "many",
    "much",
    "more",
    "most",
    "less",
    "least",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "hundred",
    "thousand",
    "first",
    "second",
    "last",
    "next",
    "other",
    "same",
    "different",
    "new",
    "old",
    "good",
    "bad",
    "great",
    "small",
    "large",
    "long",
    "short",
    "high",
    "low",
    "early",
    "late",
    "young",
    "right",
    "left",
    "big",
    "little",
    "own",
    "sure",
    "able",
    "free",
    "full",
    "clear",
    "close",
    "open",
    "public",
    "private",
    "human",
    "local",
    "social",
    "national",
    "real",
    "best",
    "better",
    "true",
    "false",
    "hard",
    "easy",
    "simple",
    "strong",
    "weak",
    "happy",
    "sad",
    "hot",
    "cold",
    "warm",
    "cool",
    "dark",
    "light",
    "time",
    "year",
    "day",
    "week",
    "month",
    "hour",
    "minute",
    "people",
    "person",
    "man",
    "woman",
    "child",
    "world",
    "life",
    "hand",
    "part",
    "place",
    "case",
    "point",
    "group",
    "number",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "problem",
    "fact",
    "water",
    "money",
    "story",
    "book",
    "word",
    "home",
    "room",
    "mother",
    "father",
    "family",
    "student",
    "teacher",
    "friend",
    "city",
    "country",
    "house",
    "car",
    "road",
    "river",
    "tree",
    "flower",
    "animal",
    "dog",
    "cat",
    "bird",
    "fish",
    "food",
    "bread",
    "apple",
    "rice",
    "tea",
    "coffee",
    "music",
    "song",
    "art",
    "game",
    "team",
    "school",
    "class",
    "lesson",
    "answer",
    "idea",
    "reason",
    "result",
    "change",
    "plan",
    "list",
    "step",
    "rule",
    "example",
    "method",
    "model",
    "data",
    "file",
    "table",
    "line",
    "page",
    "letter",
    "name",
    "message",
    "say",
    "get",
    "make",
    "go",
    "know",
    "take",
    "see",
    "come",
    "think",
    "look",
    "want",
    "give",
    "use",
    "find",
    "tell",
    "ask",
    "seem",
    "feel",
    "try",
    "leave",
    "call",
    "keep",
    "let",
    "begin",
    "show",
    "hear",
    "play",
    "run",
    "move",
    "live",
    "believe",
    "bring",
    "happen",
    "write",
    "provide",
    "sit",
    "stand",
    "lose",
    "pay",
    "meet",
    "include",
    "learn",
    "explain",
    "describe",
    "summarize",
    "translate",
    "compare",
    "list",
    "count",
    "sort",
    "reverse",
    "add",
    "subtract",
    "multiply",
    "divide",
    "convert",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "north",
    "south",
    "east",
    "west",
    "morning",
    "evening",
    "night",
    "today",
    "tomorrow",
    "yesterday",
    "please",
    "thanks",
    "hello",
    "goodbye",
    "sorry",
    "okay",
    "very",
    "really",
    "quite",
    "also",
    "only",
    "just",
    "still",
    "even",
    "again",
    "never",
    "always",
    "often",
    "user",
    "assistant",
    "system",
    "tool",
    "instruction",
    "input",
    "output",
    "response",
]


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = rng.choices(WORDS, k=rng.randint(4, 24))
        number = str(rng.randint(0, 9999))
        out.append(" ".join(words).capitalize() + f" {number}" + rng.choice([".", "?", "!", ",", ":"]))
    return out


def make_tokenizer(*, vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE tokenizer (any text encodes) with ChatML special tokens and template.

    `<|im_end|>` ends each turn and is the EOS token, so a model trained on assistant turns
    learns to stop; `<|pad|>` is a pad token of its own.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .data import CHATML_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
    )


def _write_random(auto_class, config, tokenizer, path: Path, *, seed: int, **options) -> Path:
    """A model of `config` with random weights (the same for the same seed), written to `path` with its tokenizer."""
    import torch

    torch.manual_seed(seed)
    model = auto_class.from_config(config, **options)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_model(
    path: Path,
    *,
    arch: str = "llama",
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 4096,
    embedding_rows: int | None = None,
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight causal LM of `arch` and its tokenizer to `path`; the same seed gives the same files.

    `embedding_rows` (default: the tokenizer's size) can be larger to give the model a real
    model's vocabulary size, as the benchmark's Llama-3.2-1B shape does; this tokenizer
    never produces the extra ids.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    tokenizer = make_tokenizer(vocab_size=vocab_size, seed=seed)
    config = AutoConfig.for_model(
        arch,
        vocab_size=max(embedding_rows or 0, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        # Five times the usual spread: the random model's logits are then peaked enough that
        # adapters, which cannot rescale the final norm or the output layer, visibly learn.
        initializer_range=0.1,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _write_random(AutoModelForCausalLM, config, tokenizer, path, seed=seed, dtype=getattr(torch, dtype))


# -- encoders and encoder-decoders ------------------------------------------------------------

# Capitalised names the word-piece tokenizers also learn, for tagged (NER) and QA test data.
NAMES = ["Ada", "Grace", "Alan", "Marie", "Paris", "London", "Rome", "Berlin", "Acme", "Globex", "Initech"]


def _wordpiece_tokenizer(special_tokens: tuple[str, ...], single: str, pair: str | None, *, vocab_size: int, seed: int):
    """A lower-casing word-piece tokenizer (BERT's kind) trained on the spot; `single` and `pair` are
    its post-processor templates ("[CLS] $A [SEP]"), which add the special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.WordPiece(unk_token=special_tokens[1]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False)
    corpus = _corpus(seed) + [" ".join(random.Random(seed + i).choices(NAMES, k=6)) for i in range(200)]
    backend.train_from_iterator(corpus, trainer=trainer)
    used = {token for token in special_tokens if token in single or (pair and token in pair)}
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, backend.token_to_id(token)) for token in sorted(used)]
    )
    return backend


def make_encoder_tokenizer(*, vocab_size: int = 600, seed: int = 0):
    """BERT's tokenizer, trained on the spot: word pieces, "[CLS] question [SEP] context [SEP]"."""
    from transformers import PreTrainedTokenizerFast

    backend = _wordpiece_tokenizer(
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        "[CLS] $A [SEP]",
        "[CLS] $A [SEP] $B:1 [SEP]:1",
        vocab_size=vocab_size,
        seed=seed,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def make_tiny_encoder(
    path: Path, *, seed: int = 0, vocab_size: int = 600, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> Path:
    """A random-weight BERT (the base model, "BertModel", as encoders are published) and its
    tokenizer at `path`: token classification and question answering put their heads on it."""
    from transformers import AutoConfig, AutoModel

    tokenizer = make_encoder_tokenizer(vocab_size=vocab_size, seed=seed)
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _write_random(AutoModel, config, tokenizer, path, seed=seed)


def make_tiny_seq2seq(
    path: Path, *, seed: int = 0, vocab_size: int = 600, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> Path:
    """A random-weight T5 encoder-decoder and a word-piece tokenizer that ends every text with "</s>"."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    backend = _wordpiece_tokenizer(("<pad>", "<unk>", "</s>"), "$A </s>", None, vocab_size=vocab_size, seed=seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=512
    )
    config = AutoConfig.for_model(
        "t5",
        vocab_size=len(tokenizer),
        d_model=hidden_size,
        d_kv=hidden_size // num_heads,
        d_ff=4 * hidden_size,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return _write_random(AutoModelForSeq2SeqLM, config, tokenizer, path, seed=seed)
