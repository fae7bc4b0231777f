"""From settings to localised entity CFG (Loom appendix A.1): which entity tokens a generation follows, and the
per-frame `EntityGuidance` (attention-derived mask or a user PNG) the render loops ask for. The guidance math
itself lives in `loom.infer.entity_cfg`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .entity_cfg import EntityGuidance, guided_velocity, mask_from_pixels, parse_layers
from .loop import InputError, ItemContexts
from .settings import GenerationSettings


def entity_tags(s: GenerationSettings, text: str, vocabulary: tuple[str, ...]) -> list[str]:
    """The entity tokens localised CFG follows: --entity-token (checked against the text), else every entity
    token of `vocabulary` the text contains, in order of first appearance."""
    found = sorted({t for t in vocabulary if t in text}, key=text.index)
    if s.entity_token is not None:
        want = [t.strip() for t in s.entity_token.split(",") if t.strip()]
        missing = [t for t in want if t not in text]
        if not want or missing:
            raise InputError(f"--entity-token {s.entity_token}: {', '.join(missing) or 'nothing'} not in the "
                             "prompt")
        return want
    if not found:
        raise InputError(f"--entity-scale needs an entity token in the prompt ({', '.join(vocabulary)})")
    return found


def user_mask(path: str, h: int, w: int, stride: int) -> torch.Tensor:
    """A PNG mask (white = the entity's region) on the h × w token grid."""
    from .pipeline import load_image_file

    m = load_image_file(path).convert("L")
    m = m.resize((w * stride, h * stride), Image.NEAREST)
    return mask_from_pixels(torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0), h, w)


def velocity_hook(s: GenerationSettings, prompt: str, h: int, w: int, stride: int, vocabulary: tuple[str, ...]):
    """Velocity hook for localised entity CFG with a user mask (s_entity inside, the text scale outside), for
    callers that drive `Engine.generate_image` themselves; the tasks pass `EntityGuidance` instead."""
    if s.entity_scale is None:
        return None
    entity_tags(s, prompt, vocabulary)
    if s.entity_mask in (None, "auto"):
        raise InputError("a velocity hook needs --entity-mask PNG; attention masks come from the sampler")
    mask = user_mask(s.entity_mask, h, w, stride)
    rt, rmin = s.cfg_renorm_type, s.cfg_renorm_min

    def hook(v_c, v_t, v_i, s_t, s_i):
        return guided_velocity(v_c, v_t, v_i, s_t, s_i, s.entity_scale, mask.to(v_c.device), rt, rmin)
    return lambda items: hook


def entity_for(s: GenerationSettings, contexts: ItemContexts, text: str, h: int, w: int, stride: int,
               vocabulary: tuple[str, ...], num_layers: int, frame_texts: list[str] | None = None):
    """`entity_for(items, k)` for the render loops: frame k's `EntityGuidance` (None = ordinary CFG), or None
    when localised entity CFG is off. Without --entity-token, frame k follows the entity tokens of
    `frame_texts[k-1]` when it names any (tutorial: step k's text; decompose: the k-th token), else all.
    Ranges of the knobs are checked by `GenerationSettings.check_values`."""
    if s.entity_scale is None:
        return None
    tags = entity_tags(s, text, vocabulary)
    if s.entity_mask not in (None, "auto"):
        mask = user_mask(s.entity_mask, h, w, stride)
        return lambda items, k: EntityGuidance(s.entity_scale, mask=mask, tags=tuple(tags))
    try:
        layers = parse_layers(s.entity_layers, num_layers)
    except ValueError as e:
        raise InputError(str(e)) from None
    threshold = s.entity_threshold
    if threshold is None and s.entity_top_fraction is None:
        threshold = 0.5

    def make(items, k: int) -> EntityGuidance | None:
        use = tags
        if s.entity_token is None and frame_texts is not None and k <= len(frame_texts):
            use = [t for t in tags if t in frame_texts[k - 1]] or tags
        pos, total = contexts.token_positions(items, use)
        if not pos:
            return None
        return EntityGuidance(s.entity_scale, positions=pos, layers=layers, step=s.entity_step,
                              threshold=threshold if s.entity_top_fraction is None else None,
                              top_fraction=s.entity_top_fraction, smooth=s.entity_smooth, tags=tuple(use),
                              context_len=total)
    return make
