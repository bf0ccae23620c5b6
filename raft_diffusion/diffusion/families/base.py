"""The model-family interface: everything that differs between SD 1.x/2.x, SDXL, SD3 and FLUX.

A family wraps one loaded diffusers pipeline and answers, for the generic sampling, training and
LoRA code:

- **conditioning**: :meth:`ModelFamily.encode_prompts` turns texts into a dict of per-sample
  tensors (``Cond``: name -> (N, ...) tensor on the CPU; e.g. ``prompt_embeds``, ``pooled``), cached
  per prompt by :class:`~raft_diffusion.diffusion.sampling.PromptEncoder`;
- **sampling**: :meth:`ModelFamily.pipeline_inputs` maps a Cond (and the negative one) onto the
  pipeline's ``__call__`` arguments; the pipeline returns latents in the family's *training space*
  (what the denoiser takes), which :meth:`decode` / :meth:`encode` map to and from images;
- **training**: :meth:`draw_training_noise` (noise and timesteps or sigmas, drawn from a private
  generator in a fixed order), :meth:`training_pair` (the noisy input and the regression target:
  epsilon, v-prediction or flow), :meth:`loss_weights` and :meth:`predict` (one denoiser forward);
- **LoRA**: the trainable denoiser (:attr:`denoiser_attr`: ``unet`` or ``transformer``), the
  default targets, and the file written by the pipeline class's own ``save_lora_weights``.

Families sit in :data:`raft_diffusion.diffusion.families.FAMILIES`; the loader picks one from the
``_class_name`` in ``model_index.json`` (or ``model.family``). Nothing here imports the round loop.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

#: Frozen conditioning of N samples: name -> (N, ...) tensor.
Cond = dict[str, torch.Tensor]


def index_cond(cond: Cond, idx: Any) -> Cond:
    """The rows ``idx`` (a slice, list or index tensor) of every tensor of ``cond``."""
    return {k: v[idx] for k, v in cond.items()}


def cat_cond(parts: Sequence[Cond]) -> Cond:
    """Row-wise concatenation of Conds with the same keys."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def cond_to(cond: Cond, device: torch.device, dtype: torch.dtype | None = None) -> Cond:
    """Every floating tensor of ``cond`` moved to ``device`` (and cast to ``dtype`` when given)."""
    return {k: v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device) for k, v in cond.items()}


def where_cond(drop: torch.Tensor, uncond: Cond, cond: Cond) -> Cond:
    """``cond`` with the rows where ``drop`` (B,) is True replaced by the single-row ``uncond``."""
    out = {}
    for k, v in cond.items():
        mask = drop.to(v.device).view(-1, *([1] * (v.dim() - 1)))
        out[k] = torch.where(mask, uncond[k].to(v.device, v.dtype).expand_as(v), v)
    return out


class ModelFamily:
    """One diffusers pipeline family. Subclasses set the class attributes and the methods marked so."""

    #: registry name (``model.family``)
    name: ClassVar[str] = ""
    #: the diffusers pipeline class name, as in ``model_index.json``'s ``_class_name``
    pipeline_class: ClassVar[str] = ""
    #: more ``_class_name`` values this family serves (e.g. img2img variants of the same weights)
    aliases: ClassVar[tuple[str, ...]] = ()
    #: the trainable denoiser's attribute on the pipeline: "unet" or "transformer"
    denoiser_attr: ClassVar[str] = "unet"
    #: frozen text encoders (pipeline attributes), moved off the accelerator by ``model.offload``
    text_encoder_attrs: ClassVar[tuple[str, ...]] = ("text_encoder",)
    #: default ``lora.target_modules`` (the attention projections)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    #: components ``model_index.json`` must list
    required_components: ClassVar[tuple[str, ...]] = ()
    #: whether sampling uses negative-prompt conditioning for classifier-free guidance
    uses_negative: ClassVar[bool] = True

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        #: the run's image size (height, width) in pixels, set by the backend; families whose latents
        #: do not carry it (packed latents) read it in encode / decode / predict
        self.size: tuple[int, int] | None = None
        #: the run's ``sampling.guidance_scale`` (guidance-distilled models take it in training too)
        self.guidance_scale: float = 1.0

    # ------------------------------------------------------------------ modules
    @property
    def denoiser(self) -> torch.nn.Module:
        """The module the LoRA trains (UNet or transformer)."""
        return getattr(self.pipe, self.denoiser_attr)

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    def text_encoders(self) -> list[torch.nn.Module]:
        """The frozen text encoders that are loaded (an optional one may be None)."""
        return [m for m in (getattr(self.pipe, a, None) for a in self.text_encoder_attrs) if m is not None]

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, *self.text_encoders()]

    @classmethod
    def load_kwargs(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments from the model options: the ``model.*`` fields,
        plus ``source`` (the resolved folder or hub id) and ``dtype`` (a name). ``model.vae`` is every
        family's (:func:`raft_diffusion.diffusion.pipeline.load_vae`)."""
        return {}

    def after_load(self, options: dict[str, Any]) -> None:
        """Adjust the loaded pipeline (e.g. keep a VAE in float32); ``options`` as in :meth:`load_kwargs`."""

    def configure_training(self, train: Any) -> None:
        """Read the family's training settings from the run's ``TrainConfig`` (flow families: the
        sigma weighting scheme); called by the backend before training."""

    # ------------------------------------------------------------------ sizes
    def size_factor(self) -> int:
        """Image sizes must be multiples of this (VAE downsampling x the denoiser's own)."""
        raise NotImplementedError

    def native_size(self) -> int:
        """The model's default image size in pixels."""
        raise NotImplementedError

    # ------------------------------------------------------------------ conditioning and sampling
    def encode_prompts(self, texts: list[str]) -> Cond:
        """Frozen conditioning of ``texts`` (N, ...) on the CPU, in the text encoders' dtype."""
        raise NotImplementedError

    def pipeline_inputs(self, cond: Cond, negative: Cond | None) -> dict[str, Any]:
        """The pipeline ``__call__`` arguments carrying ``cond`` (and ``negative`` when guiding)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ latents <-> images
    def _vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def to_vae_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Training-space latents (N, ...) -> what ``vae.decode`` takes (N, C, h, w)."""
        z = latents / self.vae.config.scaling_factor
        shift = self._vae_shift()
        return z + shift if shift else z

    def from_vae_space(self, z: torch.Tensor) -> torch.Tensor:
        """``vae.encode`` latents (N, C, h, w) -> training space: ``(z - shift) * scaling``."""
        shift = self._vae_shift()
        return (z - shift if shift else z) * self.vae.config.scaling_factor

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Training-space latents -> images (N, 3, H, W) float32 in [0, 1], on the VAE's device."""
        vae = self.vae
        x = self.to_vae_space(latents.to(device=vae.device, dtype=vae.dtype))
        images = vae.decode(x.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> training-space latents float32 on the CPU (the VAE
        posterior's mean, shifted and scaled: what :meth:`decode` inverts)."""
        vae = self.vae
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device=vae.device, dtype=vae.dtype) * 2 - 1
            out.append(self.from_vae_space(vae.encode(x).latent_dist.mean.float()).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ training
    def draw_training_noise(self, shape: Sequence[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise (shape) and per-row timesteps/sigmas for one micro-batch, drawn from ``generator``."""
        raise NotImplementedError

    def training_pair(self, x0: torch.Tensor, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy denoiser input, regression target) from clean training-space latents ``x0``."""
        raise NotImplementedError

    def loss_weights(self, draws: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-row loss weights (B,), or None for a plain mean (epsilon / v-prediction)."""
        return None

    def predict(self, model: Any, noisy: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond,
                size: tuple[int, int]) -> torch.Tensor:
        """One forward of ``model`` (the denoiser, possibly wrapped by accelerate) at image ``size`` (h, w)."""
        raise NotImplementedError

    @classmethod
    def build_tiny(cls, seed: int = 0, sample_size: int = 16) -> Any:
        """A tiny random pipeline of this family (random weights, offline, seconds) for tests and trials."""
        raise NotImplementedError(f"the {cls.name} family has no tiny builder")

    # ------------------------------------------------------------------ LoRA files
    def save_lora_weights(self, out_dir: str, layers: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Write ``layers`` with the pipeline class's own ``save_lora_weights`` (its load_lora_weights reads it)."""
        type(self.pipe).save_lora_weights(
            out_dir, safe_serialization=True,
            **{f"{self.denoiser_attr}_lora_layers": layers, f"{self.denoiser_attr}_lora_adapter_metadata": metadata},
        )
