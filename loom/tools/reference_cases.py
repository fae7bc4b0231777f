"""Runners for the fixture cases: each rebuilds a case's inputs from cases.json with loom's own code and returns
the tensors it produced, keyed like the fixture (`<case>/...`). Inference cases live in `loom.infer.reference`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..data.packing import PackGeometry, pack_sequences
from ..data.tokenizer import SpecialTokens
from ..data.transforms import grid_position_ids, patchify_image, pil_to_tensor
from ..data.types import PlanItem, SequencePlan
from ..model.attention import spec_from_splits
from ..model.flow import timesteps_from_logits
from ..model.vae import decoded_to_uint8, encode_to_tokens, patchify_latent, unpatchify_latent
from .fixture import Fixture


def _uint8_to_input(u8: Tensor) -> Tensor:
    return (u8.float() / 255.0 - 0.5) / 0.5


def run_train_forward(fx: Fixture, ctx) -> dict[str, Tensor]:
    case = fx.cases["train_forward"]
    out: dict[str, Tensor] = {}
    plans = []
    for s in case["samples"]:
        items = []
        for it in s["items"]:
            off = it.get("official_plan_item", {})
            if it["type"] == "text":
                items.append(PlanItem("text", text_ids=list(it["token_ids"]), loss=bool(it.get("ce_loss")),
                                      enable_cfg=bool(off.get("enable_cfg", 0)), name=it.get("text_key", "")))
            else:
                img = pil_to_tensor(fx.transform(it["transform"]).resize(fx.image(it["image"])))
                items.append(PlanItem(it["type"], image=img, loss=bool(it.get("noisy_target", False)),
                                      enable_cfg=bool(off.get("enable_cfg", 0)),
                                      timestep_logit=it.get("timestep_logit"), name=it.get("image_key", "")))
        plans.append(SequencePlan(items, source=s["name"]))
    batch = pack_sequences(plans, ctx.tokens, PackGeometry.from_config(ctx.cfg))
    p = "train_forward/"
    out[p + "packed_position_ids"] = batch.packed_position_ids
    out[p + "packed_text_ids"] = batch.packed_text_ids
    out[p + "packed_text_indexes"] = batch.packed_text_indexes
    out[p + "packed_vit_token_indexes"] = batch.packed_vit_token_indexes
    out[p + "packed_vit_position_ids"] = batch.packed_vit_position_ids
    out[p + "vit_token_seqlens"] = batch.vit_token_seqlens
    out[p + "packed_vae_token_indexes"] = batch.packed_vae_token_indexes
    out[p + "packed_latent_position_ids"] = batch.packed_latent_position_ids
    out[p + "packed_timesteps_logit"] = batch.packed_timestep_logits
    out[p + "packed_t"] = timesteps_from_logits(batch.packed_timestep_logits, case.get("timestep_shift", 1.0))
    out[p + "mse_loss_indexes"] = batch.mse_loss_indexes
    out[p + "ce_loss_indexes"] = batch.ce_loss_indexes
    out[p + "packed_label_ids"] = batch.packed_label_ids
    out[p + "ce_loss_weights"] = batch.ce_loss_weights
    mask = spec_from_splits(batch.sample_lens, batch.split_lens, batch.attn_modes).dense()
    start = 0
    for i, n in enumerate(batch.sample_lens):
        out[f"{p}sample{i}/attention_mask"] = mask[start:start + n, start:start + n]
        start += n

    # clean latents of the whole pack, encoded as one zero-padded batch (official quirk)
    p_lat = ctx.cfg.latent_patch_size
    x0_list = encode_to_tokens(ctx.vae, batch.vae_images, batch.vae_latent_shapes, p_lat)
    x0 = torch.cat(x0_list)
    noise = torch.zeros_like(x0)
    targets = []  # (sample, item, rows in x0)
    row, img_i = 0, 0
    for si, s in enumerate(case["samples"]):
        for it in s["items"]:
            if it["type"] != "vae_image":
                continue
            n = x0_list[img_i].shape[0]
            out[f"{p}sample{si}/item{it['index']}/x0"] = x0_list[img_i]
            if it.get("noisy_target"):
                noise[row:row + n] = fx.tensors[f"{p}sample{si}/item{it['index']}/eps"]
                targets.append((si, it["index"], n))
            row, img_i = row + n, img_i + 1
    batch.packed_noise = noise
    with torch.no_grad():
        res = ctx.model(batch, x0=x0, return_logits=True, timestep_shift=case.get("timestep_shift", 1.0))
    r = 0
    for si, ii, n in targets:
        out[f"{p}sample{si}/item{ii}/v_pred"] = res.v_pred[r:r + n]
        out[f"{p}sample{si}/item{ii}/v_target"] = res.v_target[r:r + n]
        r += n
    c = 0
    for si, s in enumerate(case["samples"]):
        for it in s["items"]:
            if it["type"] == "text" and it.get("ce_loss"):
                n = len(it["token_ids"]) + 1
                out[f"{p}sample{si}/item{it['index']}/logits"] = res.logits[c:c + n]
                out[f"{p}sample{si}/item{it['index']}/labels"] = batch.packed_label_ids[c:c + n]
                out[f"{p}sample{si}/item{it['index']}/ce"] = res.ce[c:c + n]
                c += n
    out[p + "scalar/ce_mean"] = res.ce.mean()
    out[p + "scalar/mse_mean"] = res.mse.mean()
    return out


def run_vit_features(fx: Fixture, ctx) -> dict[str, Tensor]:
    case = fx.cases["vit_features"]
    cfg = ctx.cfg
    patches, pos, lens, keys = [], [], [], []
    for im in case["images"]:
        img = pil_to_tensor(fx.transform(case.get("transform_name", "vit_transform")).resize(fx.image(im["image"])))
        gh, gw = img.shape[1] // cfg.vit.patch_size, img.shape[2] // cfg.vit.patch_size
        patches.append(patchify_image(img, cfg.vit.patch_size))
        pos.append(grid_position_ids(gh, gw, cfg.vit_max_num_patch_per_side))
        lens.append(gh * gw)
        keys.append(im["image_key"])
    cat_p, cat_pos, seqlens = torch.cat(patches), torch.cat(pos), torch.tensor(lens)
    with torch.no_grad():
        feats = ctx.model.vit_model(cat_p, cat_pos, seqlens)
        emb = ctx.model.embed_vit(cat_p, cat_pos, seqlens)
    out, s = {}, 0
    for k, n, pt, ps in zip(keys, lens, patches, pos):
        out[f"vit_features/{k}/patches_uint8"] = ((pt * 0.5 + 0.5) * 255).round().to(torch.uint8)
        out[f"vit_features/{k}/position_ids"] = ps
        out[f"vit_features/{k}/siglip_out"] = feats[s:s + n]
        out[f"vit_features/{k}/embedding"] = emb[s:s + n]
        s += n
    return out


def run_vae(fx: Fixture, ctx) -> dict[str, Tensor]:
    case = fx.cases["vae"]
    enc = case["encode"]
    img = pil_to_tensor(fx.transform(enc["transform"]).resize(fx.image(enc["image"])))
    p = ctx.cfg.latent_patch_size
    h, w = case["decode"]["tokens_hw"]
    tokens = fx.tensors["vae/decode/tokens"]
    with torch.no_grad():
        moments = ctx.vae.moments(img[None])[0]
        latent = ctx.vae.encode(img[None])[0]
        dlat = unpatchify_latent(tokens, h, w, p)
        dec = ctx.vae.decode(dlat[None])[0]
    assert torch.equal(patchify_latent(dlat, p), tokens)  # layout round trip
    return {"vae/encode/moments": moments, "vae/encode/latent": latent, "vae/decode/latent": dlat,
            "vae/decode/decoder_out": dec, "vae/decode/image_uint8": decoded_to_uint8(dec)}


def run_images(fx: Fixture, ctx) -> dict[str, Tensor]:
    """The resized inputs themselves (exact): tells a resize bug apart from a model bug."""
    out = {}
    for im in fx.meta.get("images", {}).values():
        for name, tkey in im.get("tensors", {}).items():
            tr = fx.transform(name.replace("_uint8", "_transform"))
            out[tkey] = torch.from_numpy(np.asarray(tr.resize(fx.image(im["file"]))).copy())
    return out


RUNNERS: dict[str, Callable] = {
    "train_forward": run_train_forward,
    "vit_features": run_vit_features,
    "vae": run_vae,
}


class ModelContext:
    """The model, autoencoder, tokenizer and config of a fixture, loaded once with loom's loader."""

    def __init__(self, root) -> None:
        from ..model.weights import load_bagel

        torch.manual_seed(0)
        self.model, self.vae, self.tok, self.cfg = load_bagel(root, verbose=False)
        self.model.eval()
        self.tokens = SpecialTokens.from_tokenizer(self.tok)
