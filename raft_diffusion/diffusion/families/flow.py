"""Flow matching (rectified flow) training, shared by the SD3 / SD3.5 and FLUX.1 families.

One training step, as diffusers' ``train_dreambooth_lora_sd3.py`` / ``_flux.py`` do it:

- noise ~ N(0, I) of the latents' shape, then ``u`` (B,) from
  ``diffusers.training_utils.compute_density_for_timestep_sampling`` (``train.weighting_scheme``:
  ``logit_normal`` with ``train.logit_mean`` / ``logit_std``, ``mode`` with ``train.mode_scale``,
  else uniform), both from the trainer's generator, in that order;
- ``u`` -> indices into the training scheduler's 1000 timesteps / sigmas (a fresh
  ``FlowMatchEulerDiscreteScheduler`` from the pipeline's scheduler config: its static ``shift``,
  e.g. 3.0 for SD3, is already in its sigmas); with ``use_dynamic_shifting`` (FLUX.1) the sigmas are
  then shifted by ``mu = calculate_shift(image sequence length)`` as the pipeline shifts them at
  sampling (``scheduler.time_shift``), for the run's image size;
- ``x_t = (1 - sigma) * x0 + sigma * noise``, target ``noise - x0`` (the velocity);
- per-row loss weights from ``compute_loss_weighting_for_sd3`` (``cosmap``, ``sigma_sqrt``; ones
  otherwise).

The denoiser takes the timestep as its pipeline passes it (``timestep_divisor``: SD3 ``t`` in
[0, 1000], FLUX ``t / 1000``). The weighting settings come from the run's ``train.*`` fields
(:meth:`FlowFamily.configure_training`; defaults: logit_normal, 0, 1, 1.29).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Sequence

import torch

from raft_diffusion.diffusion.families.base import ModelFamily
from raft_diffusion.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: the ``train.*`` fields a flow family reads from its options, with their defaults
FLOW_OPTIONS: dict[str, Any] = {"weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29}


class FlowFamily(ModelFamily):
    """A flow-matching transformer family (SD3, FLUX.1). Subclasses set :attr:`timestep_divisor`
    and implement :meth:`image_seq_len` besides the conditioning and the denoiser call."""

    denoiser_attr = "transformer"
    #: the denoiser's ``timestep`` is the scheduler's t in [0, 1000] divided by this (FLUX: 1000)
    timestep_divisor: ClassVar[float] = 1.0

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.weighting_scheme: str = FLOW_OPTIONS["weighting_scheme"]
        self.logit_mean: float = FLOW_OPTIONS["logit_mean"]
        self.logit_std: float = FLOW_OPTIONS["logit_std"]
        self.mode_scale: float = FLOW_OPTIONS["mode_scale"]
        self._train_scheduler: Any = None

    def after_load(self, options: dict[str, Any]) -> None:
        """Refuse a non-flow sampler."""
        self.check_scheduler()

    def configure_training(self, train: Any) -> None:
        """The flow-matching ``train.*`` settings (weighting scheme, logit mean / std, mode scale)."""
        for key, default in FLOW_OPTIONS.items():
            setattr(self, key, type(default)(getattr(train, key, default)))

    # ------------------------------------------------------------------ schedulers and sizes
    def check_scheduler(self) -> None:
        """A ``ConfigError`` unless the pipeline's scheduler is a flow-matching one."""
        name = type(self.pipe.scheduler).__name__
        if not name.startswith("FlowMatch"):
            raise ConfigError(
                f"sampling.scheduler gave this {self.pipeline_class} a {name}, which does not sample a flow-matching "
                "model; set sampling.scheduler: null to keep the pipeline's own FlowMatchEulerDiscreteScheduler"
            )

    @property
    def train_scheduler(self) -> Any:
        """A fresh ``FlowMatchEulerDiscreteScheduler`` from the pipeline's scheduler config: its 1000
        training sigmas (static shift applied), untouched by the sampler's ``set_timesteps``."""
        if self._train_scheduler is None:
            from diffusers import FlowMatchEulerDiscreteScheduler

            self.check_scheduler()
            self._train_scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        return self._train_scheduler

    def native_size(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    def image_seq_len(self, size: tuple[int, int]) -> int:
        """The transformer's image sequence length at image ``size`` (h, w): what ``calculate_shift`` takes."""
        raise NotImplementedError

    def _size(self) -> tuple[int, int]:
        if self.size is None:
            raise ModelError(f"the {self.name} family needs the run's image size; set family.size = (height, width) first")
        return self.size

    def shift_mu(self, size: tuple[int, int]) -> float:
        """``mu`` of the resolution-dependent shift at image ``size``, as the pipeline computes it."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.train_scheduler.config
        return float(calculate_shift(self.image_seq_len(size), c.base_image_seq_len, c.max_image_seq_len,
                                     c.base_shift, c.max_shift))

    def training_sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (B,) in [0, 1] -> sigmas (B,) float32: the training scheduler's sigmas at indices
        ``u * 1000`` (clamped to the last one), dynamically shifted when the scheduler says so."""
        sched = self.train_scheduler
        n = int(sched.config.num_train_timesteps)
        indices = (u * n).long().clamp(0, n - 1)
        sigmas = sched.sigmas[indices].float()
        if sched.config.use_dynamic_shifting:
            sigmas = sched.time_shift(self.shift_mu(self._size()), 1.0, sigmas)
        return sigmas

    # ------------------------------------------------------------------ training
    def draw_training_noise(self, shape: Sequence[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """noise (shape) ~ N(0, I), then u (B,) by the weighting scheme, from ``generator`` in that
        order; returns noise, sigmas (B,) and timesteps (B,) = sigmas x 1000, float32."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        noise = torch.randn(tuple(shape), generator=generator)
        u = compute_density_for_timestep_sampling(
            self.weighting_scheme, int(shape[0]), logit_mean=self.logit_mean, logit_std=self.logit_std,
            mode_scale=self.mode_scale, generator=generator,
        )
        sigmas = self.training_sigmas(u)
        n = float(self.train_scheduler.config.num_train_timesteps)
        return {"noise": noise, "sigmas": sigmas, "timesteps": sigmas * n}

    def training_pair(self, x0: torch.Tensor, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = (1 - sigma) x0 + sigma noise; target noise - x0 (both shaped like ``x0``)."""
        noise = draws["noise"]
        sigma = draws["sigmas"].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return (1.0 - sigma) * x0 + sigma * noise, noise - x0

    def loss_weights(self, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) ``compute_loss_weighting_for_sd3`` of the scheme at the rows' sigmas."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.weighting_scheme, draws["sigmas"]).float()

    def model_timestep(self, draws: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``timestep`` (B,) the denoiser takes: the scheduler's t (cast to ``dtype`` first when
        given, as the FLUX pipeline casts it to the latents' dtype) over :attr:`timestep_divisor`."""
        t = draws["timesteps"] if dtype is None else draws["timesteps"].to(dtype)
        return t if self.timestep_divisor == 1.0 else t / self.timestep_divisor
