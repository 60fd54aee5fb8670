"""The aMUSEd rows of `make bench` (benchmarks/amused.py) on tiny parts, its workers run in this
process: both frameworks build the same architectures, every stage is timed, the rows, FLOPs and
the batch estimate are filled, the table renders. No timings are asserted."""

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig as HFTextConfig, CLIPTextModelWithProjection

from diffusers_vq_files import TINY_VQ
from stage_bench import in_process
from mlx_imgen.autoencoders.diffusers_vq import DiffusersVQConfig
from mlx_imgen.families.amused import config_from_json
from mlx_imgen.flops import clip_text_flops, uvit_forward_flops
from mlx_imgen.text.clip import CLIPTextConfig
from uvit_files import tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import amused  # noqa: E402

TINY_TEXT = CLIPTextConfig(width=24, depth=2, heads=2, mlp_hidden=48, vocab_size=100,
                           eos_token_id=99, projection_dim=16)


def tiny_parts(size):
    uvit = config_from_json(tiny_config(stages=size == "512"))
    vq = DiffusersVQConfig(block_out_channels=TINY_VQ["block_out_channels"], layers_per_block=1,
                           latent_channels=4, norm_groups=4, num_vq_embeddings=8192,
                           vq_embed_dim=3)
    return uvit, vq, TINY_TEXT


def test_the_torch_worker_builds_the_published_architecture():
    for size in ("256", "512"):
        uvit, vq, text = amused.parts(size)
        assert config_from_json(amused.uvit_kwargs(uvit)) == uvit
        assert amused.vq_kwargs(vq)["block_out_channels"] == [128, 256, 256, 512, 768]
        assert amused.text_kwargs(text)["hidden_size"] == 768


def test_clip_text_flops_equal_torchs_count():
    model = CLIPTextModelWithProjection(HFTextConfig(**amused.text_kwargs(TINY_TEXT),
                                                     attn_implementation="eager")).eval()
    ids = torch.tensor(amused.text_ids(TINY_TEXT, 1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    assert clip_text_flops(TINY_TEXT, ids.shape[1]) == counter.get_total_flops()


def test_rows_of_both_frameworks_on_tiny_parts(monkeypatch):
    monkeypatch.setattr(amused, "parts", tiny_parts)

    monkeypatch.setattr(amused.workers, "run_worker", in_process(amused))
    monkeypatch.setattr(amused.workers, "mlx_setup", lambda: "MLX setup")
    result = amused.measure(["256", "512"], [1, 2], repeats=1, steps_timed=2,
                            torch_threads=[1])
    assert [(r["model"], r["batch"]) for r in result["rows"]] == \
        [("amused-256", 1), ("amused-256", 2), ("amused-512", 1), ("amused-512", 2)]
    for row in result["rows"]:
        uvit, _, _ = tiny_parts(row["size"])
        assert row["flops_per_image"]["sampling"] == 12 * 2 * uvit_forward_flops(uvit).total
        for who in ("mlx", "torch"):
            x = row[who]
            assert x["text_s"] > 0 and x["step_s"] > 0 and x["decode_s"] > 0
            assert x["s_per_image"] * row["batch"] == x["total_min_s"]
        assert row["mlx"]["peak_gb"] > 0 and row["torch"]["peak_gb"] is None  # CPU torch
    assert set(result["largest_batch_estimate"]) == {"amused-256", "amused-512"}
    table = amused.markdown(result)
    assert table.count("| amused-512 |") == 4 and "MLX setup" in table


def test_largest_batch_follows_the_peaks_growth():
    rows = [{"batch": 1, "mlx": {"peak_gb": 3.0}}, {"batch": 2, "mlx": {"peak_gb": 5.0}}]
    assert amused.stages.largest_batch(rows, 20.0) == 9
    assert amused.stages.largest_batch(rows[:1], 20.0) is None
    flat = [rows[0], {"batch": 2, "mlx": {"peak_gb": 3.0}}]
    assert amused.stages.largest_batch(flat, 20.0) is None


def test_the_fit_row_runs_the_estimated_batch(monkeypatch):
    monkeypatch.setattr(amused, "parts", tiny_parts)
    seen = []

    def fake_row(bench, size, batch, *args):
        seen.append(batch)
        return {"batch": batch, "mlx": {"peak_gb": float(batch), "memory_limit_gb": 10.0}}

    monkeypatch.setattr(amused.stages, "row", fake_row)
    monkeypatch.setattr(amused.workers, "mlx_setup", lambda: "MLX setup")
    monkeypatch.setattr(amused.stages, "torch_setup", lambda packages: "torch")
    result = amused.measure(["256"], [1, 2], fit_row=True)
    assert seen == [1, 2, 10] and result["rows"][-1]["largest_fit"]
    assert result["largest_batch_estimate"] == {"amused-256": 10}
