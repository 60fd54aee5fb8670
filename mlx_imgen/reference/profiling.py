"""The torch side of `profile --reference torch`: the same workload, weights and sampling plan
(and for diffusion MLX's noise), measured by `mlx_imgen.profiling.measure` like the MLX run and
reported with the same record fields. This module is the torch adapter: device, synchronisation,
peak memory, threads and the torch models built from the MLX workload.

On CUDA every step ends with `torch.cuda.synchronize` (on MPS with `torch.mps.synchronize`), so
a step's time covers its kernels. Model calls are counted, not inferred from the plan.
"""

import os
import platform
from typing import Callable

from mlx_imgen.paradigms import diffusion
from mlx_imgen.devices import cpu_name
from mlx_imgen.paradigms.next_token import TextPrefix
from mlx_imgen.profiling import Framework, Workload, check_sizes, measure, stand_in_prompts

from . import pick_device, require_torch
from .backbone import from_mlx
from .samplers import condition_on, iterate, replay_mlx_noise

torch = require_torch()


class TorchFramework(Framework):
    """The torch mirror `model` of `work` on `device`, with a torch `decode` (or None)."""
    oom_types = (torch.cuda.OutOfMemoryError, MemoryError)
    peak_memory_note = "torch reports peak memory on CUDA only (torch.cuda.max_memory_allocated)"

    def __init__(self, model, work: Workload, device: str, decode: Callable | None):
        self.model, self.work, self.device = model, work, device
        self._decode, self.decodes = decode, decode is not None

    def labels(self, batch_size: int):
        """MLX's labels, or a text model's stand-in prompts (`profiling.stand_in_prompts`, the
        same ids as the MLX run's), on the device."""
        config = self.model.config
        if self.work.prompt_tokens:
            prompts = stand_in_prompts(config, batch_size, self.work.prompt_tokens)
            return condition_on(prompts, self.device)
        return torch.arange(batch_size, device=self.device) % config.num_classes

    def embed(self, labels):
        # a text prefix is embedded by the loop's prefill (its first step), as in MLX
        if isinstance(labels, TextPrefix):
            return labels.ids
        with torch.inference_mode():
            return self.model.class_embed(labels)

    def sampling(self, labels, seed: int) -> Callable:
        """The MLX run's initial and step noise are drawn here, before the clock starts: the
        torch run then does the MLX run's work (an adaptive solver's step count depends on
        where it starts)."""
        plan, kwargs = self.work.plan, {}
        if self.work.latent_shape:
            shape = (labels.shape[0], *self.work.latent_shape)
            noise, step_noise = replay_mlx_noise(plan, seed, shape)
            kwargs["noise"] = noise.to(self.device)
            if diffusion.random_steps(plan):
                kwargs["step_noise"] = [step_noise(i, shape) for i in range(plan.steps)]
        return lambda: iterate(self.model, labels, plan, seed=seed, **kwargs)

    def sync(self, value=None) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        elif self.device == "mps":
            torch.mps.synchronize()

    step_done = sync

    def decode(self, samples):
        with torch.inference_mode():
            return self._decode(samples)

    def zero_codes(self, shape: tuple):
        return torch.zeros(shape, dtype=torch.long, device=self.device)

    def reset_peak(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 1e9 if self.device == "cuda" else None

    def release(self) -> None:
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def info(self) -> dict:
        """Framework, device, torch version and threads, for the reference record. `ld_preload`
        matters on CPU: a BLAS preloaded for MLX also serves some of torch's matmuls, and its
        thread pool competes with torch's."""
        if self.device == "cuda":
            name = torch.cuda.get_device_name()
        elif self.device == "mps":
            name = f"Apple GPU (MPS), {platform.machine()}"
        else:
            name = cpu_name()
        return {"framework": "torch", "device": self.device, "device_name": name,
                "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
                "ld_preload": os.environ.get("LD_PRELOAD") or None}


def torch_decoder(autoencoder, kind: str | None = None, device: str | None = None,
                  grid: tuple[int, int] | None = None) -> Callable:
    """The torch decode of an MLX autoencoder, built from its configuration and weights on
    `device`: a VQ model's `vq.code_decoder` (codes -> images, `grid` (h, w) for flat codes)
    or a KL-VAE's `kl.latent_decoder` (scaled latents -> images). `kind` is "vq" or "kl"; left
    out, the module's type tells."""
    if kind is None:
        from mlx_imgen.autoencoders import AUTOENCODERS
        kind = next((name for name, known in AUTOENCODERS.items()
                     if isinstance(autoencoder, known.model)), None)
    if kind == "vq":
        from . import vq
        return vq.code_decoder(vq.from_mlx(autoencoder, device), grid)
    if kind == "kl":
        from . import kl
        return kl.latent_decoder(kl.from_mlx(autoencoder, device))
    raise ValueError(f"no torch decoder for autoencoder kind {kind!r} "
                     f"({type(autoencoder).__name__}); use 'vq' or 'kl'")


def profile_reference(work: Workload, batch_size: int, *, trials: int = 3,
                      step_budget_s: float | None = None, seed: int = 0,
                      device: str | None = None, decode=None, torch_model=None,
                      threads: int | None = None, autoencoder=None,
                      autoencoder_kind: str | None = None, min_steps: int = 1) -> dict:
    """Measure the torch mirror of `work` at one batch size; fields as profile_workload's, plus
    framework, device, device_name, torch_version, torch_threads and the counted passes.

    `decode` is a torch callable from final codes or latents to images (for a VQ decoder,
    `mlx_imgen.reference.vq.code_decoder`); or `autoencoder`, the MLX VQ model or KL-VAE that
    the workload decodes with (`autoencoder_kind` "vq" or "kl", else read from its type), has
    one built by `torch_decoder`. Without either the decode stage is not timed.
    `torch_model`, the mirror already built on `device` (`backbone.from_mlx`), saves rebuilding
    it for every batch size. `threads` sets torch's intra-op threads for this call only. A
    batch that runs out of memory gives a record with status "out_of_memory" instead of raising.

    This runs in the calling process, sharing whatever BLAS it preloaded for MLX; for a fair
    comparison `mlx_imgen.reference.child.profile_reference_in_child` runs it in a clean one.
    """
    check_sizes(batch_size, trials)
    device = device or pick_device()
    if autoencoder is not None:
        if decode is not None:
            raise ValueError("pass decode or autoencoder, not both")
        grid = None if work.latent_shape else (work.model.config.grid_size,) * 2
        decode = torch_decoder(autoencoder, autoencoder_kind, device, grid)
    model = torch_model if torch_model is not None else from_mlx(work.model, device)
    previous_threads = torch.get_num_threads()
    if threads is None and device == "cpu" and "openblas" in os.environ.get("LD_PRELOAD", ""):
        # The OpenBLAS preloaded for MLX also serves torch's matmuls with its own threads;
        # torch's intra-op threads on top oversubscribe the cores (measured on the 2-core
        # machine: an S-size forward took 1.8 s with 2 torch threads, 0.27 s with 1).
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    try:
        framework = TorchFramework(model, work, device, decode)
        return measure(framework, work, batch_size, trials, step_budget_s, seed, min_steps)
    finally:
        torch.set_num_threads(previous_threads)
