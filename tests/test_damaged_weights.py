"""A damaged pipeline folder (truncated or garbage weights, a broken index, a missing shard)
is refused with one sentence naming the file and the fix, never a crash or a traceback."""

import json

import mlx.core as mx
import pytest

from mlx_imgen.weights.shards import INDEX_FILE, WEIGHTS_FILE, load_weights, save_weights


def sharded(folder):
    save_weights(folder, {"a": mx.ones((4, 4)), "b": mx.arange(8).astype(mx.float32)}, {},
                 max_shard_bytes=40)
    return folder


def refused(folder, *names):
    with pytest.raises(ValueError) as err:
        load_weights(folder)
    message = str(err.value)
    assert "convert the model again" in message and "\n" not in message
    assert any(name in message for name in names), message


@pytest.mark.parametrize("index", ["[]", "{}", "not json", '{"weight_map": {}}',
                                   '{"weight_map": {"a": "../model.safetensors"}}',
                                   '{"weight_map": {"a": 3}}', '{"weight_map": []}'])
def test_broken_index_is_refused(tmp_path, index):
    (sharded(tmp_path) / INDEX_FILE).write_text(index)
    refused(tmp_path, INDEX_FILE)


def test_missing_shard_is_refused(tmp_path):
    sharded(tmp_path)
    names = sorted(set(json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"].values()))
    (tmp_path / names[-1]).unlink()
    refused(tmp_path, names[-1])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "huge-header"])
def test_damaged_weights_file_is_refused(tmp_path, damage):
    mx.save_safetensors(str(tmp_path / WEIGHTS_FILE), {"a": mx.ones((64, 64))})
    path = tmp_path / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 100], "garbage": bytes(range(256)) * 4,
                      "empty": b"", "huge-header": b"\xff" * 8 + data[8:]}[damage])
    refused(tmp_path, WEIGHTS_FILE)


def test_intact_shards_still_load(tmp_path):
    weights = load_weights(sharded(tmp_path))
    assert sorted(weights) == ["a", "b"] and weights["b"].tolist() == list(range(8))
