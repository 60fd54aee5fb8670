import argparse
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from mlx_imgen.weights import torch_pickle

CheckpointError = torch_pickle.CheckpointError
UnsafeCheckpointError = torch_pickle.UnsafeCheckpointError
LazyTensor = torch_pickle.LazyTensor
flatten_state_dict = torch_pickle.flatten_state_dict
load_pt = torch_pickle.load_pt


def make_state_dict():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "f32": base,
        # Views saved next to their base share one storage, exercising strides and offsets.
        "f32_transposed": base.t(),
        "f32_slice": base[1:3, 2:5],
        "f16": torch.randn(3, 5, generator=gen).half(),
        "bf16": torch.randn(2, 7, generator=gen).to(torch.bfloat16),
        "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def torch_to_numpy(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_one_sentence(message, path):
    assert str(path) in message
    assert message.endswith(".") and ". " not in message and "\n" not in message


def write_torch_style_zip(path, pickle_bytes, storages=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")


def test_state_dict_values_and_dtypes_match_torch_exactly(tmp_path):
    sd = make_state_dict()
    path = tmp_path / "model.pt"
    torch.save(sd, path)

    loaded = load_pt(path)

    assert set(loaded) == set(sd)
    for key, ref in sd.items():
        t = loaded[key]
        assert isinstance(t, LazyTensor)
        assert t.dtype == str(ref.dtype).removeprefix("torch.")
        assert t.shape == tuple(ref.shape)
        arr = t.numpy()
        assert arr.flags.c_contiguous
        np.testing.assert_array_equal(arr, torch_to_numpy(ref), strict=True)
    assert loaded["f32_transposed"]._storage is loaded["f32"]._storage
    assert loaded["f32_slice"]._storage is loaded["f32"]._storage


def test_storages_are_memory_mapped_not_read_into_memory(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1000)}, path)

    assert isinstance(load_pt(path)["w"]._storage.raw, np.memmap)


def test_to_mlx_keeps_bfloat16_and_matches_torch(tmp_path):
    mx = pytest.importorskip("mlx.core")
    sd = make_state_dict()
    path = tmp_path / "model.pt"
    torch.save(sd, path)

    loaded = load_pt(path)

    assert loaded["bf16"].to_mlx().dtype == mx.bfloat16
    assert loaded["f16"].to_mlx().dtype == mx.float16
    for key in ("f32_transposed", "f32_slice", "f16", "bf16", "i64", "mask"):
        got = np.array(loaded[key].to_mlx().astype(mx.float32))
        np.testing.assert_array_equal(got, sd[key].float().numpy())


def test_nested_checkpoint_keeps_extras_and_flattens_to_dotted_keys(tmp_path):
    sd = make_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "steps": 3, "args": argparse.Namespace(x=1),
                "seen": {1, 2}, "lr": np.float64(1e-4)}, path)

    ckpt = load_pt(path)

    assert ckpt["steps"] == 3
    assert ckpt["args"].x == 1
    assert ckpt["seen"] == {1, 2}
    assert ckpt["lr"] == np.float64(1e-4)
    flat = flatten_state_dict(ckpt)
    assert set(flat) == {f"model.{k}" for k in sd}
    np.testing.assert_array_equal(flat["model.f32_slice"].numpy(), sd["f32_slice"].numpy())


def test_parameters_and_compressed_members_still_load(tmp_path):
    src, path = tmp_path / "src.pt", tmp_path / "deflated.pt"
    weight = torch.nn.Parameter(torch.randn(5, 3))
    torch.save({"w": weight}, src)
    # Some tools re-zip checkpoints with compression, which rules out memory mapping.
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))

    np.testing.assert_array_equal(load_pt(path)["w"].numpy(), weight.detach().numpy())


def test_loads_checkpoint_when_torch_cannot_be_imported(tmp_path):
    sd = make_state_dict()
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    script = (
        "import sys, importlib.util\n"
        "sys.modules['torch'] = None\n"
        f"spec = importlib.util.spec_from_file_location('tp', {torch_pickle.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"sd = mod.load_pt({str(path)!r})\n"
        "assert sys.modules['torch'] is None\n"
        "print(repr(float(sd['f32_slice'].numpy().sum())), repr(float(sd['bf16'].numpy().sum())))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    expected = f"{float(sd['f32_slice'].numpy().sum())!r} {float(sd['bf16'].float().numpy().sum())!r}"
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
])
def test_malicious_pickle_is_refused_without_running_anything(tmp_path, module, name):
    marker = tmp_path / "pwned"
    # Protocol 0 text: GLOBAL module.name, MARK, one argument, TUPLE, REDUCE (the call), STOP.
    # A plain pickle.loads of this payload would create the marker file.
    arg = {
        "system": f"S'touch {marker}'\n",
        "eval": f"S\"open('{marker}', 'w')\"\n",
        "Popen": f"(S'touch'\nS'{marker}'\nl",
    }[name]
    payload = f"c{module}\n{name}\n({arg}tR.".encode()
    path = tmp_path / "model.pt"
    write_torch_style_zip(path, payload)

    with pytest.raises(UnsafeCheckpointError) as err:
        load_pt(path)

    assert f"{module}.{name}" in str(err.value)
    assert_one_sentence(str(err.value), path)
    assert not marker.exists()


def test_strides_reaching_outside_the_storage_are_rejected(tmp_path):
    # A hostile stride would make as_strided read memory beyond the mapped file.
    payload = (b"ctorch._utils\n_rebuild_tensor_v2\n"
               b"((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI4\ntQ"
               b"I0\n(I4\nt(I1000000\ntI00\nNtR.")
    path = tmp_path / "model.pt"
    write_torch_style_zip(path, payload, {"0": np.ones(4, np.float32).tobytes()})

    with pytest.raises(CheckpointError) as err:
        load_pt(path)

    assert "runs past the end" in str(err.value)
    assert_one_sentence(str(err.value), path)


def test_truncated_checkpoint_raises_one_sentence_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(make_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError) as err:
        load_pt(path)

    assert "truncated" in str(err.value)
    assert_one_sentence(str(err.value), path)


def test_non_zip_file_raises_one_sentence_error(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("definitely not a checkpoint\n")

    with pytest.raises(CheckpointError) as err:
        load_pt(path)

    assert "not a PyTorch checkpoint" in str(err.value)
    assert_one_sentence(str(err.value), path)


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")

    with pytest.raises(CheckpointError) as err:
        load_pt(path)

    assert_one_sentence(str(err.value), path)


def test_legacy_torch_format_is_reported_as_unsupported(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)

    with pytest.raises(CheckpointError) as err:
        load_pt(path)

    assert "legacy" in str(err.value) and "re-save" in str(err.value)
    assert_one_sentence(str(err.value), path)


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "nope.pt"

    with pytest.raises(FileNotFoundError) as err:
        load_pt(path)

    assert isinstance(err.value, CheckpointError)
    assert_one_sentence(str(err.value), path)


def test_tensor_with_python_attributes_loads_as_plain_tensor(tmp_path):
    # torch saves such tensors through _rebuild_from_type_v2, as in LlamaGen's 3B FSDP checkpoint
    tagged = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tagged.note = "fsdp"
    path = tmp_path / "tagged.pt"
    torch.save({"w": tagged, "p": torch.nn.Parameter(torch.ones(2))}, path)
    assert b"_rebuild_from_type_v2" in zipfile.ZipFile(path).read("tagged/data.pkl")
    loaded = load_pt(path)
    np.testing.assert_array_equal(loaded["w"].numpy(), tagged.detach().numpy())
    np.testing.assert_array_equal(loaded["p"].numpy(), np.ones(2, dtype=np.float32))
