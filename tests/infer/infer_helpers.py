"""Helpers shared by the inference tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bagel-tiny"
TINY = dict(resolution=(32, 32), num_timesteps=4, vae_transform=(64, 32), vit_transform=(56, 28),
            max_plan_tokens=24)
TINY_ARGS = ["--resolution", "32", "--timesteps", "4", "--vae-transform", "64,32", "--vit-transform", "56,28",
             "--max-plan-tokens", "24", "--no-progress"]


def pattern_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)
