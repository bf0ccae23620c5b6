"""CLIP embedding backbones shared by the CLIP-based scorers.

Two implementations of one small interface (:class:`ClipBackbone`):

- :class:`OpenClipBackbone`: an open_clip architecture name plus a ``pretrained`` tag (``"openai"``)
  or a local checkpoint file. Preprocessing comes from the model's own config
  (``open_clip.get_model_preprocess_cfg``): size, resize mode, interpolation, mean, std.
- :class:`TransformersClipBackbone`: a transformers ``CLIPModel`` from a hub id or a local folder;
  preprocessing from its saved ``CLIPImageProcessor`` config (size, crop, mean, std, resample).

Both take images as float tensors (N, 3, H, W) in [0, 1] on any device, preprocess them as float
tensors on the model's device (no PIL round trip) and return *un-normalised* embeddings (N, D)
float32; scorers L2-normalise. Models load lazily, once; :func:`shared_backbone` lets several
scorers share one loaded model.

Preprocessing matches the PIL pipelines of the originals up to the uint8 quantisation: resize
(bicubic, antialiased), then clamp to [0, 1] (PIL cannot overshoot), centre crop (or pad for the
``longest`` mode), normalise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from raft_diffusion.errors import ScorerError
from scorers.common import BaseScorer, resolve_device, resolve_dtype
from scorers.weights import from_pretrained, is_hub_id

_INTERP = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "nearest", 5: "bicubic"}
# PIL resample codes: 0 NEAREST, 1 LANCZOS (-> bicubic, the closest torch kernel), 2 BILINEAR, 3 BICUBIC


@dataclass
class ImagePreprocess:
    """CLIP image preprocessing on float tensors.

    ``resize_mode``: ``"shortest"`` (shortest side to ``size``, keep ratio, then centre crop
    ``crop``), ``"squash"`` (resize to ``crop`` ignoring ratio), ``"longest"`` (longest side to
    ``size``, keep ratio, pad with ``fill`` to ``crop``; HPSv2's eval transform).
    ``crop_rounding``: offset of the centre crop, ``"round"`` (torchvision / open_clip) or
    ``"floor"`` (transformers' image processors).
    """

    size: int = 224
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_rounding: str = "round"
    do_resize: bool = True
    fill: float = 0.0
    clamp: bool = True
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ScorerError(f"resize_mode {self.resize_mode!r} must be shortest, squash or longest")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ScorerError(f"interpolation {self.interpolation!r} must be bicubic, bilinear or nearest")
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (h, w) of the resize step for an (h, w) input."""
        if not self.do_resize:
            return h, w
        if self.resize_mode == "squash":
            return self.crop if self.crop is not None else (self.size, self.size)
        if self.resize_mode == "longest":
            scale = self.size / max(h, w)
            return round(h * scale), round(w * scale)
        # torchvision Resize(int) / transformers shortest_edge: short side -> size, long side truncated
        if h <= w:
            return self.size, int(self.size * w / h)
        return int(self.size * h / w), self.size

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh, ow = self.resized_size(h, w)
        if (oh, ow) == (h, w):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(oh, ow), mode="nearest")
        return F.interpolate(x, size=(oh, ow), mode=self.interpolation, align_corners=False, antialias=True)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is None:
            return x
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # pad (centred, extra pixel right/bottom) as open_clip / transformers do
            pl, pt = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
            pr, pb = (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0
            x = F.pad(x, (pl, pr, pt, pb), value=self.fill)
            h, w = x.shape[-2:]
        if self.crop_rounding == "round":
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        else:
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        return x[..., top:top + ch, left:left + cw]

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, device=device, dtype=dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device, dtype=dtype).view(1, -1, 1, 1)
            self._cache[key] = (mean, std)
        return self._cache[key]

    def __call__(self, images: torch.Tensor, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised (N, 3, crop_h, crop_w) on ``device`` in ``dtype``.

        Resizing runs in float32 (bicubic in half precision is not supported everywhere)."""
        x = images.to(device=device or images.device, dtype=torch.float32)
        x = self._resize(x)
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        x = self._crop(x)
        mean, std = self._stats(x.device, torch.float32)
        return ((x - mean) / std).to(dtype)


class ClipBackbone:
    """Interface: ``encode_images(images) -> (N, D)``, ``encode_texts(texts) -> (N, D)`` (float32,
    un-normalised), ``preprocess`` (:class:`ImagePreprocess`), ``logit_scale`` (float), ``device``."""

    device: torch.device
    dtype: torch.dtype
    preprocess: ImagePreprocess

    def __init__(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> None:
        self.device = resolve_device(device)
        #: the device it was built for; :meth:`to` (scorer offload) changes ``device`` only
        self.home_device = self.device
        self.dtype = resolve_dtype(dtype)
        self._loaded = False

    def load(self) -> "ClipBackbone":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def to(self, device: str | torch.device) -> "ClipBackbone":
        """Move the model to ``device`` (an unloaded backbone loads there later); returns self."""
        self.device = torch.device(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(self.device)
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings of already preprocessed pixels."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, D) float32, not normalised."""
        self.load()
        pixels = self.preprocess(images, self.device, self.dtype)
        return self.embed_pixels(pixels).float()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """list of N strings -> (N, D) float32, not normalised."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, device={self.device}, dtype={self.dtype})"


class BackboneScorer(BaseScorer):
    """A scorer that runs on a :class:`ClipBackbone` (``self.backbone``): it lives where the
    backbone lives, and ``model.offload`` may park it on the CPU between calls (subclasses move
    their own extra tensors in ``to``)."""

    supports_offload = True
    backbone: ClipBackbone

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def home_device(self) -> torch.device:
        """The device the backbone was built for (``device`` is where it is now)."""
        return self.backbone.home_device


class OpenClipBackbone(ClipBackbone):
    """An open_clip model: ``model_name`` (e.g. ``"ViT-L-14"``) with ``pretrained`` a tag known to
    open_clip (``"openai"``, downloaded by open_clip into the HF cache), a local checkpoint file
    (state dict, ``.pt``/``.pth``/``.bin``/``.safetensors``, loaded strictly with
    ``weights_only=True``), or ``None`` (random weights, for tests). ``model_name`` may also be
    ``"hf-hub:org/repo"`` or ``"local-dir:/path"`` (open_clip's schemas; ``pretrained`` ignored).

    QuickGELU: when the tag was trained with QuickGELU (OpenAI's weights) the model is built with it
    (open_clip only warns otherwise, and the embeddings would be wrong). ``quick_gelu`` forces it.
    ``preprocess_overrides`` replaces fields of the model's preprocessing config (e.g.
    ``{"resize_mode": "longest"}`` for HPSv2).
    """

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 quick_gelu: bool | None = None, cache_dir: str | None = None,
                 preprocess_overrides: dict[str, Any] | None = None) -> None:
        super().__init__(device, dtype)
        self.model_name = model_name
        self.pretrained = pretrained or None
        self.quick_gelu = quick_gelu
        self.cache_dir = cache_dir
        self.preprocess_overrides = dict(preprocess_overrides or {})
        self.model: Any = None
        self.tokenizer: Any = None

    def describe(self) -> str:
        return f"open_clip {self.model_name} / {self.pretrained}"

    def _load(self) -> None:
        import open_clip

        what = f"open_clip {self.model_name}"
        schema = self.model_name.startswith(("hf-hub:", "local-dir:"))  # config + weights from the source
        if not schema and open_clip.get_model_config(self.model_name) is None:
            raise ScorerError(
                f"{what}: unknown open_clip architecture; known: {', '.join(open_clip.list_models())}"
            )
        pretrained = self.pretrained
        tag_cfg = {}
        if schema:
            pretrained = None
        elif pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(self.model_name, pretrained) or {}
            if not tag_cfg:
                path = os.path.expanduser(pretrained)
                if not os.path.isfile(path):
                    tags = ", ".join(open_clip.list_pretrained_tags_by_model(self.model_name)) or "(none)"
                    raise ScorerError(
                        f"{what}: pretrained {pretrained!r} is neither a checkpoint file nor a known tag "
                        f"(tags: {tags})"
                    )
                pretrained = path
        quick = self.quick_gelu
        if quick is None:
            quick = bool(tag_cfg.get("quick_gelu", False))
        try:
            model = open_clip.create_model(
                self.model_name, pretrained=pretrained, device=self.device, force_quick_gelu=bool(quick),
                cache_dir=self.cache_dir, weights_only=True,
            )
        except (RuntimeError, OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if tag_cfg:
                hub = str(tag_cfg.get("hf_hub", "")).rstrip("/") or str(tag_cfg.get("url", ""))
                raise ScorerError(
                    f"{what}: pretrained weights {pretrained!r} (hub repo {hub}) are not available; without "
                    f"network, run `hf download {hub}` on a connected machine to fill the Hugging Face cache, "
                    f"or pass pretrained=/path/to/checkpoint"
                ) from None
            raise ScorerError(f"{what}: cannot load checkpoint {pretrained}: {msg}") from None
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        cfg.update(self.preprocess_overrides)
        size = cfg.get("size", 224)
        size_hw = (size, size) if isinstance(size, int) else tuple(size)
        self.preprocess = ImagePreprocess(
            size=int(min(size_hw)) if cfg.get("resize_mode", "shortest") != "longest" else int(max(size_hw)),
            crop=size_hw,
            mean=tuple(cfg.get("mean", ImagePreprocess.mean)),
            std=tuple(cfg.get("std", ImagePreprocess.std)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            crop_rounding="round",
            fill=float(cfg.get("fill_color", 0) or 0) / 255.0,  # a PIL fill colour, 0..255
        )

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.load()
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float()

    @property
    def logit_scale(self) -> float:
        self.load()
        return float(self.model.logit_scale.exp().item())


class TransformersClipBackbone(ClipBackbone):
    """A transformers ``CLIPModel`` from ``model`` (hub id or local folder); image processor and
    tokenizer from ``processor`` (defaults to ``model``; PickScore keeps them in another repo).

    The image processor's saved config gives the preprocessing: ``size`` (``shortest_edge`` or
    ``height``/``width``), ``crop_size``, ``do_resize``, ``do_center_crop``, ``image_mean``,
    ``image_std``, ``resample``. Texts are tokenized with padding and truncation to the tokenizer's
    ``model_max_length`` (77 for CLIP).
    """

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None, *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> None:
        super().__init__(device, dtype)
        self.model_id = str(model)
        self.processor_id = str(processor) if processor else str(model)
        self.model: Any = None
        self.tokenizer: Any = None

    def describe(self) -> str:
        extra = "" if self.processor_id == self.model_id else f" (processor {self.processor_id})"
        return f"transformers CLIPModel {self.model_id}{extra}"

    def _load(self) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        what = f"CLIP model {self.model_id}"
        model = from_pretrained(CLIPModel.from_pretrained, self.model_id, what=what)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        proc = from_pretrained(CLIPImageProcessor.from_pretrained, self.processor_id, what=what)
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, self.processor_id, what=what)
        self.model = model
        self.preprocess = preprocess_from_image_processor(proc)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.load()
        max_len = getattr(self.tokenizer, "model_max_length", 77)
        if not isinstance(max_len, int) or max_len > 10_000:
            max_len = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                    attention_mask=enc["attention_mask"].to(self.device))
        return self.model.text_projection(out.pooler_output).float()

    @property
    def logit_scale(self) -> float:
        self.load()
        return float(self.model.logit_scale.exp().item())


def preprocess_from_image_processor(proc: Any) -> ImagePreprocess:
    """:class:`ImagePreprocess` equivalent to a transformers ``CLIPImageProcessor``."""

    def get(name: str, default: Any) -> Any:
        value = getattr(proc, name, default)
        return default if value is None else value

    size = get("size", {"shortest_edge": 224})
    size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
    crop = get("crop_size", {"height": 224, "width": 224})
    crop = dict(crop) if not isinstance(crop, int) else {"height": crop, "width": crop}
    if size.get("shortest_edge") is not None:
        mode, edge = "shortest", int(size["shortest_edge"])
    elif size.get("height") is not None:
        mode, edge = "squash", int(size["height"])
    else:
        raise ScorerError(f"image processor size {size} is not supported; use shortest_edge or height/width")
    do_crop = bool(get("do_center_crop", True))
    crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop else None
    if mode == "squash":
        squash_hw = (int(size["height"]), int(size["width"]))
        if crop_hw is None:
            crop_hw = squash_hw
        elif crop_hw != squash_hw:
            raise ScorerError("image processors that resize to height/width and then crop are not supported")
    resample = get("resample", 3)
    resample = int(getattr(resample, "value", resample))
    if not bool(get("do_normalize", True)):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = tuple(get("image_mean", ImagePreprocess.mean)), tuple(get("image_std", ImagePreprocess.std))
    return ImagePreprocess(
        size=edge, crop=crop_hw, mean=mean, std=std, interpolation=_INTERP.get(resample, "bicubic"),
        resize_mode=mode, crop_rounding="floor", do_resize=bool(get("do_resize", True)),
    )


_SHARED: dict[tuple[Any, ...], ClipBackbone] = {}


def shared_backbone(kind: str, name: str, pretrained: str | None = None, *, device: Any = None, dtype: Any = None,
                    **kwargs: Any) -> ClipBackbone:
    """One backbone per (kind, name, pretrained, device, dtype, kwargs), shared by the scorers of a
    process (an aesthetic scorer and a CLIP score on ViT-L-14 load the model once).

    ``kind``: ``"open_clip"`` (``name`` = architecture, ``pretrained`` = tag or file) or
    ``"transformers"`` (``name`` = hub id or folder, ``pretrained`` = processor id or ``None``)."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    key = (kind, name, pretrained, str(dev), str(dt), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _SHARED:
        if kind == "open_clip":
            _SHARED[key] = OpenClipBackbone(name, pretrained, device=dev, dtype=dt, **kwargs)
        elif kind == "transformers":
            _SHARED[key] = TransformersClipBackbone(name, pretrained, device=dev, dtype=dt, **kwargs)
        else:
            raise ScorerError(f"unknown backbone kind {kind!r}; use open_clip or transformers")
    return _SHARED[key]


def clear_shared_backbones() -> None:
    """Forget the shared backbones (frees their memory once no scorer holds them)."""
    _SHARED.clear()


def backbone_from_spec(spec: "ClipBackbone | str", *, device: Any = None, dtype: Any = None) -> ClipBackbone:
    """A backbone from an object or a string: ``"open_clip:ViT-L-14:openai"``,
    ``"open_clip:ViT-B-32:/path/ckpt.pt"``, ``"transformers:openai/clip-vit-large-patch14"`` or
    ``"transformers:/path/to/folder"``. A bare hub id or existing folder means transformers."""
    if isinstance(spec, ClipBackbone):
        return spec
    if not isinstance(spec, str):
        raise ScorerError(f"backbone must be a ClipBackbone or a string like 'open_clip:ViT-L-14:openai', got {spec!r}")
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:"):]
        name, _, pretrained = rest.partition(":")
        return shared_backbone("open_clip", name, pretrained or None, device=device, dtype=dtype)
    if spec.startswith("transformers:"):
        return shared_backbone("transformers", spec[len("transformers:"):], None, device=device, dtype=dtype)
    if os.path.isdir(os.path.expanduser(spec)) or is_hub_id(spec):
        return shared_backbone("transformers", spec, None, device=device, dtype=dtype)
    raise ScorerError(
        f"backbone {spec!r}: use 'open_clip:ARCH:TAG_OR_FILE' or 'transformers:HUB_ID_OR_FOLDER'"
    )
