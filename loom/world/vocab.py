"""A tiny closed-vocabulary tokenizer for the shapes world, built deterministically (no binary is shipped).

Every text the world can produce (prompts, plan steps, the scaffold, step prefixes) is split by GPT-2's byte-level
pre-tokenizer into pieces such as "Step", " 1", ":", " red", ".", "\\n"; each distinct piece becomes one word-level
token. Two-word cell names (" top left", " bottom right", …) are one piece each, the phrase merge a BPE trained on
this world would make: a cell's place in reading order is then a property of one token, instead of "top" whose
meaning ("top" or "top left") only the *next* token settles — the plan must sort elements by that order.
Decoding runs the byte-level decoder, so decode(encode(text)) == text exactly (plans round-trip with their newlines
and punctuation). BAGEL's special tokens and the Loom entity tokens are added tokens, as in the release.
`world="mechanisms"` adds the pieces of its step programs (loom/world/program.py: "Move", " last", " shape", …,
step numbers up to 12); the basic world's vocabulary is unchanged.

    tok = build_world_tokenizer("runs/demo/tokenizer", scaffold)   # a HF tokenizer folder + the loaded tokenizer
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from loom.data.entities import DEFAULT_ENTITY_TOKENS, register_entity_tokens
from loom.data.plan import DEFAULT_N_MAX, format_step, render_scaffold
from loom.world.program import DIRECTIONS, NUM_STEPS, Step, program_prompt, program_step_text
from loom.world.shapes import CELLS, COLORS, SHAPES, Element
from loom.world.text import (
    DECOMPOSE_PROMPT,
    IMAGE_TO_TUTORIAL_PROMPT,
    STYLE_PROMPT,
    compose_prompt,
    step_text,
    tutorial_prompt,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
UNK = "<|unk|>"


def world_corpus(scaffold: str, n_max: int = DEFAULT_N_MAX, world: str = "basic") -> list[str]:
    """Texts that cover every piece the shapes world can produce (plus digits for step and image numbers)."""
    elements = [Element(c, s, cell) for c in COLORS for s in SHAPES for cell in CELLS]
    prompts = [IMAGE_TO_TUTORIAL_PROMPT, STYLE_PROMPT, DECOMPOSE_PROMPT, compose_prompt(list(CELLS)),
               tutorial_prompt(elements[:3])]
    texts = [*prompts, *(render_scaffold(scaffold, p, n_max) for p in prompts), "Step 1: a\nStep 2: b\n"]
    texts += [step_text(e) for e in elements] + [format_step(1, step_text(e)) for e in elements]
    texts += [format_step(k, "x") for k in range(1, 10)] + [f"<image {k}> {k}" for k in range(10)]
    if world == "mechanisms":
        past = [Step("move", direction=d) for d in DIRECTIONS] + [Step("copy", direction=d) for d in DIRECTIONS]
        past += [Step("recolour", color=c) for c in COLORS]
        prompt = program_prompt([Step("draw", elements[0]), *past])
        texts += [prompt, render_scaffold(scaffold, prompt, n_max), *(program_step_text(s) for s in past)]
        texts += [format_step(k, program_step_text(s)) for k in range(1, max(n_max, NUM_STEPS[1]) + 1) for s in past]
    return texts


# GPT-2's pre-tokenizer pattern with the two-word cell names as one alternative in front
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PHRASES = tuple(c for c in CELLS if " " in c)


def world_pre_tokenizer():
    """Split on GPT-2's pattern (cell phrases kept whole), then map bytes like GPT-2's byte-level step."""
    from tokenizers import Regex, pre_tokenizers

    phrases = "|".join(" ?" + re.escape(p) for p in sorted(PHRASES, key=len, reverse=True))
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"{phrases}|{GPT2_PATTERN}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _pieces(texts: Iterable[str], added: tuple[str, ...]) -> list[str]:
    """Pre-tokenizer pieces of the texts, split around the added tokens first (as the HF tokenizer does)."""
    pre = world_pre_tokenizer()
    splitter = re.compile("|".join(re.escape(a) for a in added))
    segments = [seg for t in texts for seg in splitter.split(t) if seg]
    return sorted({p for seg in segments for p, _ in pre.pre_tokenize_str(seg)})


def build_world_tokenizer(out_dir: str | Path, scaffold: str, n_max: int = DEFAULT_N_MAX,
                          entity_tokens: tuple[str, ...] = DEFAULT_ENTITY_TOKENS, world: str = "basic"):
    """Write a HF tokenizer folder to `out_dir` and return it loaded with `loom.data.tokenizer.load_tokenizer`.
    Ids: the five BAGEL special tokens, the unknown token, the sorted pieces, then the entity tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from loom.data.tokenizer import load_tokenizer

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, UNK])}
    for p in _pieces(world_corpus(scaffold, n_max, world), (*SPECIAL_TOKENS, *entity_tokens)):
        vocab.setdefault(p, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = world_pre_tokenizer()
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    register_entity_tokens(tok, entity_tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return load_tokenizer(out)
