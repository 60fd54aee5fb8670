"""Profile the three paradigms at grid size S with the Python API and print FLOPs and latency."""

import mlx.core as mx

from mlx_imgen.backbone import Transformer
from mlx_imgen.grid import default_plan, grid_config, latent_shape
from mlx_imgen.paradigms import PARADIGMS
from mlx_imgen.profiling import Workload, profile_workload

for paradigm in PARADIGMS:
    cfg = grid_config(paradigm, "S")
    model = Transformer(cfg)
    mx.eval(model.parameters())
    work = Workload(name=f"grid-{paradigm}-S", size="S", model=model,
                    plan=default_plan(paradigm, cfg),
                    latent_shape=latent_shape(cfg) if cfg.input == "patches" else None)
    r = profile_workload(work, batch_size=1, trials=3, step_budget_s=2.0)
    note = " (extrapolated)" if r["extrapolated"] else ""
    print(f"{paradigm:13s} {r['gflops_per_image']:8.1f} GFLOPs/image  "
          f"{r['latency_s']['median']:7.2f} s/image{note}")
