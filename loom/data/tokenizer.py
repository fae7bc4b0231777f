"""Tokenizer loading and BAGEL's special-token roles (bagel-spec §1.4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SpecialTokens:
    """`bos` opens every text item and starts generation; `eos` closes it; image blocks are wrapped in
    `start_of_image` / `end_of_image`."""

    bos: int  # <|im_start|>
    eos: int  # <|im_end|>
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>

    @classmethod
    def from_tokenizer(cls, tok) -> SpecialTokens:
        ids = {}
        for name, text in (("bos", "<|im_start|>"), ("eos", "<|im_end|>"),
                           ("start_of_image", "<|vision_start|>"), ("end_of_image", "<|vision_end|>")):
            tid = tok.convert_tokens_to_ids(text)
            if tid is None or tid == getattr(tok, "unk_token_id", None):
                raise ValueError(f"tokenizer lacks the BAGEL special token {text}")
            ids[name] = int(tid)
        return cls(**ids)


def load_tokenizer(path: str | Path):
    """Qwen2 byte-level BPE from a release/export folder (vocab.json + merges.txt [+ tokenizer.json])."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    return AutoTokenizer.from_pretrained(str(path))


def encode(tok, text: str) -> list[int]:
    """Plain encode with nothing added (Qwen2.5 has no BOS; BAGEL uses no chat template)."""
    return list(tok.encode(text, add_special_tokens=False))
