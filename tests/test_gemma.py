"""Sana's Gemma-2 text encoder (mlx-lm's layers) and its prompts against transformers'
Gemma2Model and diffusers' SanaPipeline.encode_prompt, on a tiny random model and tokenizer."""

import logging
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch

from gemma_files import (BOS, PAD, tiny_gemma, write_gemma_tokenizer, write_text_encoder_folder,
                         reference_tokenizer)
from mlx_imgen.convert.gemma import write_gemma_folder
from mlx_imgen.convert.writer import write_pipeline
from mlx_imgen.quantize import (apply_structure, is_quantized, quantization_record,
                                relative_error)
from mlx_imgen.text.gemma import MISSING_MLX_LM, GemmaConfig
from mlx_imgen.text.gemma_prompts import INSTRUCTION, GemmaPrompts
from mlx_imgen.text.stored import build_encoder, load_text_encoder, quantizable_layers

SOURCE = {"repo": None, "file": "model.safetensors.index.json"}
# a window shorter than the inputs, so the sliding layer's mask is exercised
WINDOW = 5


def rel(ours, reference) -> float:
    """Largest element error over the reference's largest magnitude."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def convert(hub_folder, out, **options):
    component = write_gemma_folder(hub_folder, SOURCE, dtype=options.pop("dtype", None),
                                    **options)
    write_pipeline(out, {"kind": "test"}, {"text_encoder": component})
    return load_text_encoder(out / "text_encoder")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(transformers model, its hub text_encoder/ folder, our converted encoder)."""
    root = tmp_path_factory.mktemp("gemma")
    model = tiny_gemma(sliding_window=WINDOW)
    hub = write_text_encoder_folder(model, root / "hub" / "text_encoder")
    return model, hub, convert(hub, root / "converted")


def padded_batch(seed: int = 0):
    """Three rows of 11 ids, BOS first, the last two padded on the right (7 and 2 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 500, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    ids[:, 0] = 2
    return ids, mask


def test_encoder_matches_transformers_at_every_position(reference):
    model, _, encoder = reference
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    encoding = encoder.encode(mx.array(ids.numpy()), mx.array(mask.numpy()))
    assert encoding.hidden_states.shape == (3, 11, 64)
    assert rel(encoding.hidden_states, expected) <= 1e-4       # padded positions included
    assert np.array_equal(np.array(encoding.attention_mask), mask.numpy())
    # the mask matters: without it the padded row's states differ, and so does a full window
    unmasked = encoder.encode(mx.array(ids.numpy())).hidden_states
    assert rel(unmasked[1], expected[1]) > 1e-2
    encoder.config.sliding_window = None
    try:
        full = encoder.encode(mx.array(ids.numpy()), mx.array(mask.numpy())).hidden_states
    finally:
        encoder.config.sliding_window = WINDOW
    assert rel(full[0], expected[0]) > 1e-2


def test_intermediate_layers_index_as_transformers(reference):
    """layer i is block i's output before the final norm; 0 the scaled embeddings."""
    model, _, encoder = reference
    ids, mask = padded_batch(1)
    captured = []
    hook = model.layers[0].register_forward_hook(lambda m, a, out: captured.append(
        (out[0] if isinstance(out, tuple) else out).detach().numpy()))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    first = encoder.encode(mx.array(ids.numpy()), mx.array(mask.numpy()), layer=1).hidden_states
    assert rel(first, captured[0]) <= 1e-4
    embedded = encoder.encode(mx.array(ids.numpy()), layer=0).hidden_states
    with torch.no_grad():
        expected = model.embed_tokens(ids).numpy()
    assert rel(embedded, expected) <= 1e-6


def test_quantized_encoder_loads_back_and_stays_close(reference, tmp_path):
    model, hub, encoder = reference
    quantized = convert(hub, tmp_path / "q4", quantize=4, group_size=64)
    assert is_quantized(quantized)
    # every Linear and the embedding is quantized (all their widths are multiples of 64)
    floats = [p for p, m in quantized.named_modules()
              if type(m).__name__ in ("Linear", "Embedding")]
    assert floats == []
    ids, mask = padded_batch(2)
    ours = quantized.encode(mx.array(ids.numpy()), mx.array(mask.numpy())).hidden_states
    exact = encoder.encode(mx.array(ids.numpy()), mx.array(mask.numpy())).hidden_states
    # what was stored is what quantizing the float encoder in memory gives
    in_memory = convert(hub, tmp_path / "float")
    apply_structure(in_memory, quantization_record(4, 64, quantizable_layers(in_memory, 64)))
    assert relative_error(in_memory.encode(mx.array(ids.numpy()), mx.array(mask.numpy()))
                          .hidden_states, ours) <= 1e-6
    # 4-bit rounding of tiny random weights (no structure for the groups to share) costs
    # about 0.25 of the states' norm (8-bit: about 0.016): rounded, still the same function
    error = relative_error(exact, ours)
    assert 1e-3 < error < 0.35


def test_bfloat16_encoder_runs_in_bfloat16(reference, tmp_path):
    model, hub, encoder = reference
    half = convert(hub, tmp_path / "bf16", dtype="bfloat16")
    ids, mask = padded_batch(3)
    states = half.encode(mx.array(ids.numpy()), mx.array(mask.numpy())).hidden_states
    exact = encoder.encode(mx.array(ids.numpy()), mx.array(mask.numpy())).hidden_states
    assert states.dtype == mx.bfloat16
    assert relative_error(exact, states) < 0.05


def test_missing_shard_is_one_sentence_and_nothing_is_written(tmp_path):
    hub = write_text_encoder_folder(tiny_gemma(), tmp_path / "text_encoder")
    (hub / "model-00002-of-00002.safetensors").unlink()
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        convert(hub, out)
    message = str(err.value)
    assert "model-00002-of-00002.safetensors" in message
    assert message.count(". ") == 0 and "\n" not in message
    assert not out.exists()


def test_config_reads_both_rope_layouts_and_refuses_other_models():
    hf = {"model_type": "gemma2", "hidden_size": 64, "num_hidden_layers": 2,
          "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 32, "vocab_size": 512, "query_pre_attn_scalar": 24}
    assert GemmaConfig.from_hf({**hf, "rope_theta": 500.0}).rope_theta == 500.0
    assert GemmaConfig.from_hf({**hf, "rope_parameters": {"rope_theta": 7.0}}).rope_theta == 7.0
    config = GemmaConfig.from_hf(hf)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert GemmaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="not gemma2"):
        GemmaConfig.from_hf({**hf, "model_type": "llama"})


def test_missing_mlx_lm_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_lm", None)
    monkeypatch.setitem(sys.modules, "mlx_lm.models", None)
    with pytest.raises(ValueError) as err:
        build_encoder("gemma2", GemmaConfig(64, 2, 128, 4, 2, 32, 512))
    assert str(err.value) == MISSING_MLX_LM


def test_mlx_imgen_imports_without_mlx_lm():
    """mlx-lm is optional: the encoder registry and the prompts load without it."""
    script = ("import sys; sys.modules['mlx_lm'] = None; "
              "import mlx_imgen.text.stored, mlx_imgen.text.gemma_prompts")
    subprocess.run([sys.executable, "-c", script], check=True)


class RecordingEncoder(torch.nn.Module):
    """The torch model, keeping the ids each call got (what the pipeline tokenized)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    @property
    def dtype(self):
        return torch.float32

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids.numpy().copy())
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return write_gemma_tokenizer(tmp_path_factory.mktemp("gemma_tokenizer"))


def test_prompts_match_sana_pipeline_encode_prompt(reference, tokenizer_folder, caplog):
    """diffusers' own encode_prompt (tokenizer + the torch encoder only): the ids it tokenized,
    the kept states and their masks, prompts and negatives, an over-long prompt cut."""
    from diffusers import SanaPipeline

    model, _, encoder = reference
    long_prompt = " ".join(["A red fox asleep under a snowy pine tree"] * 60)
    prompts = ["  A Red Fox asleep  ", "an astronaut riding a horse", long_prompt]
    negative = "Blurry, low quality"
    recording = RecordingEncoder(model)
    pipe = SanaPipeline(tokenizer=reference_tokenizer(tokenizer_folder), text_encoder=recording,
                        vae=None, transformer=None, scheduler=None)
    with torch.no_grad():
        states, mask, null_states, null_mask = pipe.encode_prompt(
            prompts, negative_prompt=negative, device="cpu",
            complex_human_instruction=list(INSTRUCTION))
    ours = GemmaPrompts.from_folder(tokenizer_folder)
    with caplog.at_level(logging.WARNING, logger="mlx_imgen.text.tokenizer"):
        ids = ours.tokenize(prompts, instructed=True)
    warnings = [r for r in caplog.records if "cut" in r.getMessage()]
    assert len(warnings) == 1 and "fox" in warnings[0].getMessage()
    assert ids.truncated[2] and not ids.truncated[0]
    assert np.array_equal(ids.input_ids, recording.calls[0])
    assert ids.input_ids.shape[1] == ours.instructed_length > 300
    assert np.array_equal(ours.tokenize([negative] * 3, instructed=False).input_ids,
                          recording.calls[1])
    assert ids.input_ids[0, 0] == ours.tokenizer.token_id(BOS)
    assert ids.input_ids[0, -1] == ours.tokenizer.token_id(PAD)      # padded on the right
    assert ids.attention_mask[2].all()                                 # cut, so no padding

    condition = ours.condition([(p, negative) for p in prompts], None, text_encoder=encoder)
    assert condition.pooled is None and condition.states.shape == (3, 300, 64)
    assert np.array_equal(np.array(condition.mask), mask.numpy())
    assert np.array_equal(np.array(condition.null_mask), null_mask.numpy())
    assert rel(condition.states, states.numpy()) <= 1e-4
    assert rel(condition.null_states, null_states.numpy()) <= 1e-4


class CountingEncoder:
    """Wraps an encoder, recording each batch of ids it encodes."""

    def __init__(self, encoder):
        self.encoder, self.batches = encoder, []

    def encode(self, ids, mask=None, **kwargs):
        self.batches.append(np.array(ids))
        return self.encoder.encode(ids, mask, **kwargs)


def test_condition_encodes_each_distinct_text_once(reference, tokenizer_folder):
    _, _, encoder = reference
    prompts = GemmaPrompts.from_folder(tokenizer_folder)
    counting = CountingEncoder(encoder)
    pairs = [("a cat", None), ("a dog", "blurry"), ("a cat", "blurry")]
    condition = prompts.condition(pairs, [0, 0, 2, 1], text_encoder=counting)
    assert [b.shape[0] for b in counting.batches] == [2, 2]   # {cat, dog}, {"", blurry}
    assert counting.batches[1].shape[1] == 300                # negatives: no prefix
    assert condition.batch == 4 and condition.states.shape[0] == 3
    assert np.array_equal(np.array(condition.states[0]), np.array(condition.states[2]))
    alone, alone_mask = prompts.encode(encoder, ["blurry"], instructed=False)
    assert rel(condition.null_states[1], alone[0]) <= 1e-5
    assert not np.array_equal(np.array(condition.null_mask[0]), np.array(alone_mask[0]))
