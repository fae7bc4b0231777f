"""Entity tokens (Loom §3.3, appendix A.1): `<model>`, `<garment>`, … as learnable single-token anchors.

Registration never shrinks BAGEL's vocabulary (the public code's `resize_token_embeddings(len(tokenizer))`
cut 152,064 rows to ~151.7k and broke loading, loom-reference-code §4.3). New ids are `len(tokenizer)`,
`len(tokenizer)+1`, …, which on BAGEL fall into the padded, unused rows above the tokenizer; the embedding
and the untied lm_head grow only when those rows run out, to a multiple of 64. Rows are initialised from the
mean of the original rows (input and output side); every other row is untouched, so all existing ids encode
the same and every original logit is bit-identical after registration.

Persistence: the rows live inside `language_model.model.embed_tokens.weight` / `language_model.lm_head.weight`
(saved with the checkpoint); the id ↔ string map lives in the tokenizer's added tokens (`save_pretrained`);
`EntityVocab.to_dict()` is the metadata an export records. Re-registering on a tokenizer that already has
the tokens is a no-op and never re-initialises trained rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_ENTITY_TOKENS: tuple[str, ...] = (
    "<model>", "<garment>", "<upper>", "<lower>", "<bag>", "<object>", "<character>", "<scene>", "<style>",
)
ENTITY_RE = re.compile(r"^<[a-z][a-z0-9_]*>$")  # what an entity token looks like (lower-case tag)
TAG_RE = re.compile(r"<[a-z][a-z0-9_ ]*>")  # any tag-like span in a prompt (entities and `<image k>`)


@dataclass(frozen=True)
class EntityVocab:
    ids: dict[str, int]  # token string → id, in vocabulary order
    base_len: int  # len(tokenizer) before this registration: rows below it are the original vocabulary
    added: tuple[str, ...]  # tokens new in this call (the only rows `init_entity_rows` may touch)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.ids)

    def to_dict(self) -> dict:
        return {"entity_tokens": dict(self.ids)}


def register_entity_tokens(tok, tokens: tuple[str, ...] | list[str] = DEFAULT_ENTITY_TOKENS) -> EntityVocab:
    """Add `tokens` to the tokenizer as ordinary (non-special) added tokens, so decoding keeps them.

    Tokens already present keep their ids. Returns the id map and which tokens were new."""
    from tokenizers import AddedToken

    for t in tokens:
        if not ENTITY_RE.match(t):
            raise ValueError(f"entity token {t!r} must look like '<name>' (lower case, no spaces)")
    base_len = len(tok)
    vocab = tok.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if new:
        tok.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in new])
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in dict.fromkeys(tokens)}
    for t in new:
        if ids[t] < base_len:
            raise RuntimeError(f"tokenizer gave new token {t!r} the existing id {ids[t]}")
    return EntityVocab(ids, base_len, tuple(new))


def num_vocab_rows(model: nn.Module) -> int:
    return model.language_model.model.embed_tokens.weight.shape[0]


@torch.no_grad()
def resize_vocab(model: nn.Module, num_tokens: int, multiple: int = 64) -> int:
    """Ensure the embedding and lm_head have ≥ `num_tokens` rows; grow (never shrink) to a multiple of
    `multiple`. Existing rows are copied bit-exactly; new rows start at zero (then `init_entity_rows`).
    Updates `config.llm.vocab_size`. Returns the row count."""
    lm = model.language_model
    rows = num_vocab_rows(model)
    if num_tokens <= rows:
        return rows
    new_rows = int(math.ceil(num_tokens / multiple) * multiple)
    emb, head = lm.model.embed_tokens.weight, lm.lm_head.weight
    grown = nn.Embedding(new_rows, emb.shape[1], device=emb.device, dtype=emb.dtype)
    grown.weight.zero_()
    grown.weight[:rows] = emb
    grown.weight.requires_grad_(emb.requires_grad)
    head_new = nn.Linear(head.shape[1], new_rows, bias=False, device=head.device, dtype=head.dtype)
    head_new.weight.zero_()
    head_new.weight[:rows] = head
    head_new.weight.requires_grad_(head.requires_grad)
    lm.model.embed_tokens, lm.lm_head = grown, head_new
    lm.config.vocab_size = new_rows  # the same LLMConfig object as model.config.llm
    return new_rows


@torch.no_grad()
def init_entity_rows(model: nn.Module, ids: list[int], base_len: int) -> None:
    """Input and output rows of `ids` ← mean of the original rows [0, base_len) (the mean-resizing init):
    a new token starts as an "average word" rather than a random direction."""
    lm = model.language_model
    for w in (lm.model.embed_tokens.weight, lm.lm_head.weight):
        if max(ids, default=-1) >= w.shape[0]:
            raise ValueError(f"entity id {max(ids)} ≥ {w.shape[0]} rows: call resize_vocab first")
        mean = w[:base_len].float().mean(0).to(w.dtype)
        w[ids] = mean


def add_entity_tokens(model: nn.Module, tok, tokens: tuple[str, ...] | list[str] = DEFAULT_ENTITY_TOKENS,
                      multiple: int = 64) -> EntityVocab:
    """Register `tokens` in the tokenizer and give the *new* ones rows: reuse BAGEL's spare rows above
    `len(tokenizer)`, grow to a multiple of 64 only when needed, mean-initialise. Tokens that already existed
    (a loom export's tokenizer) keep their trained rows."""
    vocab = register_entity_tokens(tok, tokens)
    resize_vocab(model, len(tok), multiple)
    if vocab.added:
        init_entity_rows(model, [vocab.ids[t] for t in vocab.added], vocab.base_len)
    return vocab


def entity_positions(ids: list[int], vocab: EntityVocab, which: str | None = None) -> list[int]:
    """Indices in a token-id list where an entity token (or only `which`) occurs — the queries for the
    attention-derived region of localised entity CFG."""
    wanted = {vocab.ids[which]} if which is not None else set(vocab.ids.values())
    return [i for i, t in enumerate(ids) if t in wanted]


def unknown_tags(text: str, known: set[str] | tuple[str, ...]) -> list[str]:
    """Tag-like spans (a typo such as `<garmet>`) that are neither registered entities nor `<image k>`
    placeholders: they would be split into many sub-tokens and silently lose their anchor role."""
    out = []
    for m in TAG_RE.finditer(text):
        tag = m.group(0)
        if tag not in known and not re.fullmatch(r"<image[ _]?\d+>", tag):
            out.append(tag)
    return out
