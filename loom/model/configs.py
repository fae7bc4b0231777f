"""Architecture configs and named presets.

`LoomConfig` pins one architecture; presets tie it to a known set of weights (house rule 4). The BAGEL-level
constants are not stored in any JSON of the official release (its loaders hard-code them, bagel-spec §1.1),
so `load_bagel` fills them from `BagelConstants` or infers them from tensor shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LLMConfig:
    """Qwen2 decoder (with BAGEL's overrides: QK-norm on, untied head, MoT layers)."""

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    qk_norm: bool = True
    mot: bool = True  # False: dense Qwen2 layers (initialising from a plain LLM)
    attention_bias: bool = True  # q/k/v carry a bias in Qwen2; o_proj never does

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ViTConfig:
    """SigLIP NaViT tower as BAGEL builds it: `num_hidden_layers` is the number *built* (JSON value − 1)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 980  # learned position table has (image_size / patch_size)² rows
    layer_norm_eps: float = 1e-6

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class VAEConfig:
    """`kind="flux"`: diffusers AutoencoderKL laid out as the FLUX.1 autoencoder. `kind="pixel"`: lossless
    space-to-depth for tiny synthetic models (no weights)."""

    kind: str = "flux"
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159
    downsample: int = 8  # pixels per latent cell (pixel kind: the space-to-depth factor)


@dataclass
class LoomConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    latent_patch_size: int = 2
    max_latent_size: int = 64  # latent tokens per side; the release uses 64 (code default 32)
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    visual_und: bool = True
    visual_gen: bool = True
    # Loom (paper Eq. 3): learnable temporal embedding added to every visual token of frame t.
    temporal_embedding: bool = True
    max_frames: int = 8  # timeline slots 1..max_frames (N_max of the paper is 6)
    max_references: int = 4  # reference slots -1..-max_references

    @property
    def latent_channels(self) -> int:
        return self.vae.z_channels

    @property
    def latent_token_dim(self) -> int:
        return self.latent_patch_size**2 * self.vae.z_channels

    @property
    def pixels_per_latent_token(self) -> int:
        return self.vae.downsample * self.latent_patch_size

    @property
    def vit_patch_dim(self) -> int:
        return 3 * self.vit.patch_size**2


def preset(name: str) -> LoomConfig:
    """Named architectures. `bagel-7b-mot` is the release; `loom-tiny` is the CPU test model; `loom-shapes` is the
    shapes-world demo model (configs/train/shapes_demo.yaml): BAGEL's MoT at toy scale, 32 px frames through the
    lossless pixel autoencoder (space-to-depth ×2, latent patch 2 ⇒ 8×8 latent tokens), a 1-layer ViT on 28 px
    (2×2 patches), 128 vocabulary rows for the world's closed word-level tokenizer (loom/world/vocab.py)."""
    if name == "bagel-7b-mot":
        return LoomConfig()
    if name == "loom-tiny":
        return LoomConfig(
            llm=LLMConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=576,
            ),
            vit=ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            vae=VAEConfig(kind="pixel", z_channels=12, downsample=2),
            max_latent_size=16,
        )
    if name == "loom-shapes":
        return LoomConfig(
            llm=LLMConfig(
                hidden_size=192, intermediate_size=384, num_hidden_layers=4, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=128, max_position_embeddings=4096, rope_theta=10_000.0,
            ),
            vit=ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=14, image_size=28),
            vae=VAEConfig(kind="pixel", z_channels=12, downsample=2),
            latent_patch_size=2, max_latent_size=8, vit_max_num_patch_per_side=2,
        )
    raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")


PRESETS = ("bagel-7b-mot", "loom-tiny", "loom-shapes")
