"""The five diffusion plans: what a run integrates, with which solver, under which guidance.

Time conventions. The rectified flow has x_t = (1 - t) * data + t * noise and integrates from
t = 1 (noise) to 0 (data); its velocity is noise - data. `t_noise=0` selects the linear
interpolant of SiT instead, x_t = t * data + (1 - t) * noise, integrated from t = 0 to 1; the
SDE always uses that one. DPM-Solver++ works on the rectified flow (t is its sigma). The
family's plan decides what the model sees (`time_scale`) and which channels CFG mixes.
"""

from dataclasses import dataclass

@dataclass
class FlowPlan:
    steps: int = 50
    solver: str = "euler"        # "euler" | "heun"
    shift: float = 1.0           # time shift: t -> shift * t / (1 + (shift - 1) * t)
    cfg_scale: float = 4.0
    time_scale: float = 1000.0   # the model sees t * time_scale
    t_noise: float = 1.0         # where the path is pure noise: 1 (rectified flow) or 0 (SiT)
    guided_channels: int | None = None  # CFG mixes only these leading channels; None: all
    # "linear": steps + 1 evenly spaced times from noise to data, then shifted; "discrete": the
    # steps span the trained times 1 .. 1/train_steps (the latter shifted once more), then the
    # data end, as diffusers' FlowMatchEulerDiscreteScheduler spaces Sana's Euler steps
    schedule: str = "linear"
    train_steps: int = 1000

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {self.solver!r}; use 'euler' or 'heun'")
        _check_t_noise(self.t_noise)
        if self.schedule not in FLOW_SCHEDULES:
            raise ValueError(f"unknown flow schedule {self.schedule!r}; use 'linear' or "
                             "'discrete'")
        _check_steps(self.train_steps)

    def forward_passes(self) -> int:
        return self.steps * (2 if self.solver == "heun" else 1)


@dataclass
class Dopri5Plan:
    """Adaptive steps: how many is known only after a run, which records them in the plan."""
    cfg_scale: float = 4.0
    atol: float = 1e-6
    rtol: float = 1e-3
    max_steps: int = 1000        # accepted and rejected steps before giving up
    time_scale: float = 1.0
    t_noise: float = 0.0
    guided_channels: int | None = None
    steps_taken: int = 0         # accepted and rejected steps of the last completed run
    passes_used: int = 0         # model evaluations of the last completed run (2 + 6 a step)

    def __post_init__(self):
        _check_cfg(self.cfg_scale)
        _check_t_noise(self.t_noise)
        if self.atol <= 0 or self.rtol <= 0:
            raise ValueError(f"atol and rtol must be positive, got {self.atol} and {self.rtol}")
        _check_steps(self.max_steps)

    @property
    def steps(self) -> int:
        return self.steps_taken

    def forward_passes(self) -> int:
        return self.passes_used


@dataclass
class SDEPlan:
    """Euler-Maruyama on SiT's linear interpolant (t = 0 noise, t = 1 data).

    `steps` counts model evaluations: steps - 1 stochastic steps on linspace(0, 1 - last_step,
    steps), then one deterministic step of the drift over `last_step` (SiT's "Mean" last step).
    """
    steps: int = 250
    cfg_scale: float = 4.0
    diffusion: str = "sigma"     # the diffusion coefficient w(t); one of DIFFUSION_FORMS
    diffusion_norm: float = 1.0
    last_step: float = 0.04
    time_scale: float = 1.0
    guided_channels: int | None = None

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.diffusion not in DIFFUSION_FORMS:
            raise ValueError(f"unknown diffusion form {self.diffusion!r}; use one of "
                             f"{', '.join(DIFFUSION_FORMS)}")
        if not 0 < self.last_step < 1:
            raise ValueError(f"last_step must lie between 0 and 1, got {self.last_step}")

    def forward_passes(self) -> int:
        return self.steps


@dataclass
class GaussianPlan:
    """DDPM with an epsilon-predicting model on the linear beta schedule (DiT, ADM).

    The model sees the original integer timesteps of the respaced ones. "learned-range" reads
    the variance from the prediction's second half of channels (learned sigma).
    """
    steps: int = 250
    sampler: str = "ddpm"        # "ddpm" (ancestral) | "ddim"
    cfg_scale: float = 4.0
    eta: float = 0.0             # DDIM's noise; 0 is deterministic
    variance: str = "learned-range"  # | "fixed-large" | "fixed-small"
    guided_channels: int | None = None
    train_steps: int = 1000

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {self.sampler!r}; use 'ddpm' or 'ddim'")
        if self.variance not in ("learned-range", "fixed-large", "fixed-small"):
            raise ValueError(f"unknown variance {self.variance!r}; use 'learned-range', "
                             "'fixed-large' or 'fixed-small'")
        if self.steps > self.train_steps:
            raise ValueError(f"steps ({self.steps}) cannot exceed the {self.train_steps} "
                             "timesteps the model was trained on")
        if self.eta < 0:
            raise ValueError(f"eta must be 0 or more, got {self.eta}")

    def forward_passes(self) -> int:
        return self.steps


@dataclass
class DPMSolverPlan:
    """Multistep DPM-Solver++ (data prediction) on the rectified flow, its sigma the flow time.

    The sigmas are the trained times 1 - 1/train_steps .. 0, `steps` + 1 evenly spaced, shifted,
    the zero dropped, then a final 0. The model sees floor(sigma * train_steps) * time_scale.
    The first step and the last (to sigma 0, which lands on the data prediction) are first
    order; the others use the previous step's prediction too (`order` 2, the midpoint form).
    """
    steps: int = 20
    order: int = 2               # 1 (DDIM-like) | 2
    shift: float = 3.0           # sigma -> shift * sigma / (1 + (shift - 1) * sigma)
    cfg_scale: float = 4.5
    time_scale: float = 1.0
    train_steps: int = 1000
    guided_channels: int | None = None

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.order not in (1, 2):
            raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {self.order}")
        if self.shift <= 0:
            raise ValueError(f"the time shift must be positive, got {self.shift}")
        _check_steps(self.train_steps)

    def forward_passes(self) -> int:
        return self.steps


PLANS = (FlowPlan, Dopri5Plan, SDEPlan, GaussianPlan, DPMSolverPlan)
FLOW_SCHEDULES = ("linear", "discrete")


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def _check_cfg(scale: float) -> None:
    if scale < 0:
        raise ValueError(f"the guidance scale must be 0 or more, got {scale}")


def _check_t_noise(t_noise: float) -> None:
    if t_noise not in (0.0, 1.0):
        raise ValueError(f"t_noise must be 0 or 1, got {t_noise}")


# SiT's forms of the SDE's diffusion coefficient w(t); "SBDM" is left out because it is
# infinite at t = 0. The SDE solver reads them from here.
DIFFUSION_FORMS = ("constant", "sigma", "linear", "decreasing", "increasing-decreasing")
