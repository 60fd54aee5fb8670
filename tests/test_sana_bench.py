"""The Sana rows of `make bench` (benchmarks/sana.py) on tiny parts, its workers run in this
process: both frameworks build the same architectures (diffusers' and transformers' from our
configs), every stage is timed, the rows, FLOPs and the batch estimate are filled, the table
renders. No timings are asserted."""

import sys
from pathlib import Path

from dc_ae_files import TINY_DC_AE
from gemma_files import TINY as TINY_GEMMA
from sana_files import tiny_config
from stage_bench import in_process
from mlx_imgen.autoencoders.dc_ae import DCAEConfig
from mlx_imgen.families.sana import config_from_json
from mlx_imgen.flops import gemma_text_flops, sana_forward_flops
from mlx_imgen.text.gemma import GEMMA2_2B, GemmaConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import sana  # noqa: E402

TINY_TEXT = GemmaConfig.from_hf({**TINY_GEMMA, "model_type": "gemma2"})


def tiny_parts(size):
    transformer = config_from_json(tiny_config(in_channels=4, out_channels=4,
                                               caption_channels=TINY_TEXT.hidden_size,
                                               sample_size=2 if size == "0.6b" else 4))
    ae = DCAEConfig(**{**{k: v for k, v in TINY_DC_AE.items() if not k.startswith("encoder_")
                          and k not in ("upsample_block_type", "decoder_norm_types",
                                        "decoder_act_fns")}, "latent_channels": 4})
    return transformer, ae, TINY_TEXT, 320


def test_the_torch_worker_builds_the_published_architecture():
    for size in ("0.6b", "1.6b"):
        transformer, ae, text, instructed = sana.parts(size)
        assert config_from_json(sana.transformer_kwargs(transformer)) == transformer
        assert sana.dc_ae_kwargs(ae)["decoder_block_out_channels"] == \
            [128, 256, 512, 512, 1024, 1024]
        assert sana.gemma_kwargs(text)["hidden_size"] == 2304 and text == GEMMA2_2B
        assert instructed > 300


def test_rows_of_both_frameworks_on_tiny_parts(monkeypatch):
    monkeypatch.setattr(sana, "parts", tiny_parts)
    monkeypatch.setattr(sana.workers, "run_worker", in_process(sana))
    monkeypatch.setattr(sana.workers, "mlx_setup", lambda: "MLX setup")
    result = sana.measure(["0.6b", "1.6b"], [1, 2], repeats=1, steps_timed=2,
                          torch_threads=[1])
    assert [(r["model"], r["batch"]) for r in result["rows"]] == \
        [("sana-0.6b-512", 1), ("sana-0.6b-512", 2), ("sana-1.6b-1024", 1),
         ("sana-1.6b-1024", 2)]
    for row in result["rows"]:
        transformer, _, text, instructed = tiny_parts(row["size"])
        g = transformer.sample_size
        assert row["flops_per_image"]["sampling"] == \
            20 * 2 * sana_forward_flops(transformer, g, g, 300).total
        assert row["flops_per_image"]["text"] == \
            gemma_text_flops(text, instructed).total + gemma_text_flops(text, 300).total
        for who in ("mlx", "torch"):
            x = row[who]
            assert x["text_s"] > 0 and x["step_s"] > 0 and x["decode_s"] > 0
            assert x["s_per_image"] * row["batch"] == x["total_min_s"]
        assert row["mlx"]["peak_gb"] > 0 and row["torch"]["peak_gb"] is None  # CPU torch
    assert set(result["largest_batch_estimate"]) == {"sana-0.6b-512", "sana-1.6b-1024"}
    table = sana.markdown(result)
    assert table.count("| sana-1.6b-1024 |") == 4 and "MLX setup" in table
