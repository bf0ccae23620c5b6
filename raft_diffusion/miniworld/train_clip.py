"""Train the tiny CLIP contrastively on world (image, caption) pairs and save it with
``save_pretrained`` (model, tokenizer, image processor) to ``<out>/clip``.

Captions are random shorter variants of the template (see :func:`world.caption`); pairs in a batch
with the same caption are both counted as positives (soft targets), so repeats are not negatives.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.miniworld import common, world
from raft_diffusion.diffusion.tokenizers import BOS_ID, EOS_ID, VOCAB_SIZE, build_tokenizer, slim_tokenizer_folder

log = logging.getLogger(__name__)

MAX_TOKENS = 32


def make_config(quick: bool = False):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2 if quick else 3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        projection_dim=64,
    )
    vision = dict(
        image_size=world.NATIVE_RESOLUTION,
        patch_size=4,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2 if quick else 4,
        num_attention_heads=4,
        num_channels=3,
        projection_dim=64,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def train_clip(out: str | Path, *, seed: int = 0, steps: int = 2500, batch_size: int = 128, lr: float = 2e-3,
               quick: bool = False, max_seconds: float | None = None) -> dict:
    """``max_seconds``: stop early at this wall time (the learning-rate schedule follows whichever of
    steps and time runs out first)."""
    """Train and save; returns {"steps", "wall_s", "final_loss", "path"}."""
    from transformers import CLIPModel

    t0 = time.time()
    out = Path(out)
    clip_dir = out / "clip"
    common.seed_all(seed)
    tok = build_tokenizer(out / "_tokenizer_src", model_max_length=MAX_TOKENS)
    processor = common.make_image_processor()
    model = CLIPModel(make_config(quick))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 20)
    progress = common.Progress(steps, max_seconds)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * progress.fraction(i)))
    )
    data = world.stream(seed + 1, batch_size)
    model.train()
    loss_ema = None
    bar = tqdm(range(steps), desc="clip", mininterval=10, disable=steps < 20)
    for step in bar:
        if progress.done(step):
            log.info("clip: time budget reached at step %d", step)
            steps = step
            break
        images, captions, _ = next(data)
        ids = common.tokenize(tok, captions)
        pixel = common.preprocess(images, processor)
        img = F.normalize(common.features(model.get_image_features(pixel_values=pixel)), dim=-1)
        txt = F.normalize(common.features(model.get_text_features(input_ids=ids)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("clip step %d/%d loss %.4f", step, steps, loss_ema)
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
    model.eval()
    save_clip(model, tok, processor, clip_dir)
    wall = time.time() - t0
    log.info("clip: %d steps in %.1f s", steps, wall)
    return {"steps": steps, "wall_s": round(wall, 1), "final_loss": round(float(loss_ema), 4), "path": str(clip_dir)}


def save_clip(model, tok, processor, clip_dir: Path) -> None:
    """Model in safetensors with the big token-embedding table in fp16 (loaded back as float32)."""
    clip_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(clip_dir)
    tok.save_pretrained(clip_dir)
    slim_tokenizer_folder(clip_dir)
    processor.save_pretrained(clip_dir)
    common.halve_embeddings(clip_dir / "model.safetensors")


def finetune_vision(out: str | Path, *, seed: int = 0, steps: int = 3000, batch_size: int = 128, lr: float = 1e-3,
                    max_seconds: float | None = None, pair_weight: float = 1.0) -> dict:
    """Second stage: train the image tower (and its projection, and the temperature) further against
    the FROZEN text tower of ``<out>/clip``, so the text encoder the UNet is conditioned on does not
    change. Loss: the caption contrastive loss plus a prompt-classification term (CLIP's zero-shot
    recipe used as a loss) over the texts "a {colour} {shape}" of the in-domain pairs only, for
    single-object images."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    t0 = time.time()
    clip_dir = Path(out) / "clip"
    common.seed_all(seed + 11)
    model = CLIPModel.from_pretrained(clip_dir)
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    model.text_model.requires_grad_(False)
    model.text_projection.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    progress = common.Progress(steps, max_seconds)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * progress.fraction(i)))
    )
    pairs = world.in_domain_combos()
    with torch.no_grad():
        pair_txt = F.normalize(common.features(model.get_text_features(
            input_ids=common.tokenize(tok, [f"{world.article(c)} {c} {s}" for c, s in pairs]))), dim=-1)
    pair_index = {p: i for i, p in enumerate(pairs)}
    data = world.stream(seed + 12, batch_size)
    model.train()
    loss_ema, done = None, 0
    bar = tqdm(range(steps), desc="clip-vision", mininterval=10, disable=steps < 20)
    for step in bar:
        if progress.done(step):
            break
        images, captions, scenes = next(data)
        with torch.no_grad():
            txt = F.normalize(common.features(model.get_text_features(input_ids=common.tokenize(tok, captions))), dim=-1)
        img = F.normalize(common.features(model.get_image_features(pixel_values=common.preprocess(images, processor))), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())
        single = [i for i, s in enumerate(scenes) if len(s.objects) == 1]
        if pair_weight and single:
            labels = torch.tensor([pair_index[(scenes[i].objects[0].colour, scenes[i].objects[0].shape)] for i in single])
            loss = loss + pair_weight * F.cross_entropy(scale * img[single] @ pair_txt.T, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        done = step + 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 100 == 0:
            log.info("clip-vision step %d loss %.4f (%.0f s)", step, loss_ema, time.time() - t0)
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
    model.eval()
    model.save_pretrained(clip_dir)
    common.halve_embeddings(clip_dir / "model.safetensors")
    wall = time.time() - t0
    log.info("clip-vision: %d steps in %.1f s", done, wall)
    return {"steps": done, "wall_s": round(wall, 1), "final_loss": round(float(loss_ema or 0.0), 4)}
