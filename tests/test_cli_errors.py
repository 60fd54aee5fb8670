"""The CLI's error contract on every command: bad input gets exit code 2, one line on stderr,
no traceback, and nothing written; Ctrl-C gets `interrupted` and exit code 130."""

import contextlib
import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamagen_files import TINY_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx_imgen import memory
from mlx_imgen.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny converted LlamaGen folder, its 8-bit copy, and three damaged copies."""
    root = tmp_path_factory.mktemp("cli-errors")
    ckpt, vq = save_gpt(tiny_gpt(), root / "c2i_tiny.pt"), save_vq(tiny_vq(), root / "vq_tiny.pt")
    good = root / "good"
    result = runner.invoke(app, ["convert", str(ckpt), "--family", "llamagen", "--config",
                                 TINY_CONFIG, "--autoencoder", str(vq), "--out", str(good)])
    assert result.exit_code == 0, result.output
    quantized = root / "quantized"
    result = runner.invoke(app, ["convert", str(good), "--quantize", "8", "--group-size", "32",
                                 "--out", str(quantized)])
    assert result.exit_code == 0, result.output
    damaged = {}
    for name in ("truncated", "empty-index", "keyless-config"):
        damaged[name] = shutil.copytree(good, root / name)
    weights = damaged["truncated"] / "transformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    (damaged["empty-index"] / "model_index.json").write_text("[]")
    (damaged["keyless-config"] / "transformer" / "config.json").write_text("{}")
    return {"root": root, "good": good, "quantized": quantized, "ckpt": ckpt, "vq": vq, **damaged}


def _gen(folder_key, *extra):
    return lambda f, out: ["generate", str(f[folder_key]), "--output", str(out / "x.png"), *extra]


def _good(*extra):
    return _gen("good", *extra)


def _convert(*extra):
    return lambda f, out: ["convert", str(f["ckpt"]), "--family", "llamagen", "--autoencoder",
                           str(f["vq"]), "--config", TINY_CONFIG, "--out", str(out / "conv"),
                           *extra]


def _profile(*extra):
    return lambda f, out: ["profile", "--trials", "1", "--json", str(out / "p.json"), *extra]


# id: (argv builder (folders, output dir) -> argv, words the one line must hold)
CASES = {
    # generate: numeric ranges, checked before the model loads
    "generate cfg nan": (_good("--cfg", "nan"), "--cfg must be"),
    "generate cfg inf": (_good("--cfg", "inf"), "--cfg must be"),
    "generate cfg negative": (_good("--cfg", "-1"), "--cfg must be"),
    "generate temperature negative": (_good("--temperature", "-1"), "--temperature must be"),
    "generate top-p 0": (_good("--top-p", "0"), "--top-p must be a number above 0"),
    "generate top-p above 1": (_good("--top-p", "1.5"), "--top-p must be"),
    "generate top-k negative": (_good("--top-k", "-5"), "--top-k must be"),
    "generate steps 0": (_good("--steps", "0"), "--steps must be"),
    "generate steps huge": (_good("--steps", "1000000000"), "--steps must be"),
    "generate n 0": (_good("--n", "0"), "--n must be"),
    "generate n huge": (_good("--n", "10000000"), "--n must be"),
    "generate classes times n": (_good("--n", "6000", "--class", "1", "--class", "2"),
                                 "at most 10000"),
    "generate batch 0": (_good("--batch-size", "0"), "--batch-size must be"),
    "generate batch huge": (_good("--batch-size", "100000"), "--batch-size must be"),
    "generate decode batch 0": (_good("--decode-batch-size", "0"), "--decode-batch-size must be"),
    "generate seed negative": (_good("--seed", "-1"), "--seed must be"),
    "generate seed huge": (_good("--seed", str(2 ** 64)), "--seed must be"),
    "generate quantize 7": (_good("--quantize", "7"), "--quantize 7 is not supported"),
    "generate group size 12": (_good("--group-size", "12"), "--group-size 12 is not supported"),
    "generate cfg-channels word": (_good("--cfg-channels", "some"), "--cfg-channels must be"),
    "generate n not a number": (_good("--n", "abc"), "'--n'"),
    "generate unknown option": (_good("--colour", "red"), "--colour"),
    "generate unknown dtype": (_gen("good", "--dtype", "float8"), "unknown dtype"),
    # generate: options that do not apply to the model
    "generate dtype on a folder": (_good("--dtype", "float16"), "--dtype does not apply"),
    "generate quantize a quantized folder": (_gen("quantized", "--quantize", "4"),
                                             "--quantize does not apply"),
    "generate sampler on llamagen": (_good("--sampler", "halton"), "--sampler does not apply"),
    "generate cfg-channels on llamagen": (_good("--cfg-channels", "3"),
                                          "--cfg-channels does not apply"),
    "generate steps on llamagen": (_good("--steps", "4"), "--steps does not apply"),
    # generate: classes
    "generate unknown class name": (_good("--class", "golden retreiver"), "golden retriever"),
    "generate class out of range": (_good("--class", "10"), "outside 0..9"),
    # generate: prompts on a class-conditional model (tests/test_prompts.py has the rest)
    "generate prompt on a class model": (_good("--prompt", "a red fox"),
                                         "is a class-conditional model: pass --class"),
    "generate prompt file on a class model": (_good("--prompts", "p.txt"), "not --prompts"),
    "generate negative prompt on a class model": (_good("--negative-prompt", "blurry"),
                                                  "not --negative-prompt"),
    # generate: outputs, folders and models
    "generate out not png": (lambda f, out: ["generate", str(f["good"]), "--out",
                                             str(out / "x.jpg")], "must end in .png"),
    "generate out folder missing": (lambda f, out: ["generate", str(f["good"]), "--out",
                                                    str(out / "no" / "x.png")], "does not exist"),
    "generate unknown alias": (lambda f, out: ["generate", "llamagen-c2i-q-256", "--out",
                                               str(out / "x.png")], "unknown model"),
    "generate truncated weights": (_gen("truncated"), "is damaged"),
    "generate index of []": (_gen("empty-index"), "not a JSON object"),
    "generate config without keys": (_gen("keyless-config"), "convert the model again"),
    # convert
    "convert quantize 7": (_convert("--quantize", "7"), "--quantize 7 is not supported"),
    "convert group size 12": (_convert("--quantize", "8", "--group-size", "12"), "--group-size"),
    "convert unknown dtype": (_convert("--dtype", "float8"), "unknown dtype"),
    "convert huge image size": (_convert("--config", '{"image_size": 16000000}'),
                                "--config image_size 16000000 is larger"),
    "convert config nan": (_convert("--config", '{"heads": NaN, "image_size": 64}'),
                           "--config heads must be"),
    "convert config not json": (_convert("--config", "{heads"), "--config"),
    "convert missing file": (lambda f, out: ["convert", str(out / "nope.pt"), "--output",
                                             str(out / "conv")], "does not exist"),
    # info
    "info not a folder": (lambda f, out: ["info", str(out / "nope")], "not a converted"),
    "info index of []": (lambda f, out: ["info", str(f["empty-index"])], "damaged or incomplete"),
    "info config without keys": (lambda f, out: ["info", str(f["keyless-config"])],
                                 "damaged or incomplete"),
    "info bits without check": (lambda f, out: ["info", str(f["good"]), "--bits", "4"],
                                "only with --check"),
    "info check bits 7": (lambda f, out: ["info", str(f["good"]), "--check", "--bits", "7"],
                          "--bits 7 is not supported"),
    # profile
    "profile batch huge": (_profile("--batch-sizes", "100000000"), "--batch-sizes must be"),
    "profile batch 0": (_profile("--batch-sizes", "0"), "batch sizes must be positive"),
    "profile trials 0": (_profile("--trials", "0"), "--trials must be"),
    "profile step budget nan": (_profile("--step-budget", "nan"), "--step-budget must be"),
    "profile step budget inf": (_profile("--step-budget", "inf"), "--step-budget must be"),
    "profile steps 0": (_profile("--steps", "0"), "--steps must be"),
    "profile image size 250": (_profile("--image-size", "250"), "multiple of 16"),
    "profile image size huge": (_profile("--image-size", "16000000"), "--image-size must be"),
    "profile memory limit 0": (_profile("--memory-limit", "0"), "--memory-limit must be"),
    "profile memory limit nan": (_profile("--memory-limit", "nan"), "--memory-limit must be"),
    "profile too big for memory": (_profile("--sizes", "XL", "--image-size", "1024",
                                            "--batch-sizes", "4096"), "more than the"),
    "profile dtype on the grid": (_profile("--dtype", "float16"), "--dtype applies to named"),
    "profile sizes with models": (lambda f, out: ["profile", str(f["good"]), "--sizes", "S"],
                                  "--sizes applies to the controlled grid"),
    "profile dtype on a folder": (lambda f, out: ["profile", str(f["good"]), "--dtype",
                                                  "float16"], "--dtype does not apply"),
    "profile out missing": (lambda f, out: ["profile", "--out", str(out / "none")],
                            "not an existing folder"),
    # models, and the command line itself
    "models unknown option": (lambda f, out: ["models", "--all"], "--all"),
    "no such command": (lambda f, out: ["draw"], "draw"),
}


def listing(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in Path(root).rglob("*"))


def assert_refused(result, words: str) -> None:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(folders, tmp_path, case):
    argv, words = CASES[case]
    before = listing(tmp_path, folders["root"])
    assert_refused(runner.invoke(app, argv(folders, tmp_path)), words)
    assert listing(tmp_path, folders["root"]) == before


def test_memory_estimate_refuses_what_cannot_fit(folders, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 ** 6)
    result = runner.invoke(app, _good("--n", "100")(folders, tmp_path))
    assert_refused(result, "more than the 0.0 GB of memory here")
    assert "generating 100 images of 8 px" in result.stderr and not list(tmp_path.iterdir())


def test_generation_estimate_grows_with_the_batch(folders):
    shape = memory.model_shape(str(folders["good"]), "float32")
    small, large = (memory.generation_estimate(shape, 8, b, b).total for b in (1, 8))
    assert shape.image_size == 8 and shape.paradigm == "next-token"
    assert large > small > shape.weight_bytes > 0


def test_unexpected_exception_is_one_line_naming_the_command(folders, tmp_path, monkeypatch):
    import mlx_imgen.loading

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(mlx_imgen.loading, "load", broken)
    result = runner.invoke(app, _good()(folders, tmp_path))
    assert_refused(result, "mlx-imgen generate failed with ZeroDivisionError: division by zero")
    monkeypatch.setenv("MLX_IMGEN_DEBUG", "1")
    result = runner.invoke(app, _good()(folders, tmp_path))
    assert isinstance(result.exception, ZeroDivisionError)


def test_class_names_are_accepted(folders, tmp_path):
    from mlx_imgen.imagenet import class_index, class_names

    assert len(class_names()) == 1000 and class_index("Golden  Retriever") == 207
    assert class_index("tench") == 0 and class_index("7") == 7
    # the tiny model has 10 classes: "goldfish" (1) is one of them
    result = runner.invoke(app, _good("--class", "goldfish")(folders, tmp_path))
    assert result.exit_code == 0, result.output


def test_out_and_output_name_the_same_file(folders, tmp_path):
    for flag in ("--out", "--output"):
        target = tmp_path / f"{flag.strip('-')}.png"
        result = runner.invoke(app, ["generate", str(folders["good"]), flag, str(target)])
        assert result.exit_code == 0 and target.is_file(), result.output


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A small tmpfs (root only); None where this machine cannot mount one."""
    path.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    try:
        yield path if ok else None
    finally:
        if ok:
            subprocess.run(["umount", str(path)], check=True)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


@pytest.mark.parametrize("target", ["generate", "convert"])
def test_full_disk_is_one_sentence_and_leaves_nothing(folders, tmp_path, monkeypatch, target):
    with mounted_tmpfs(tmp_path / "disk", "size=64k") as disk:
        if disk is None:  # no mount here: the same failure, raised where the bytes are written
            disk = tmp_path / "disk"

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device", str(disk / "x"))
            monkeypatch.setattr("mlx_imgen.io.os.fdopen", no_space)
            monkeypatch.setattr("mlx_imgen.convert.writer.save_weights", no_space, raising=False)
        else:
            _fill(disk)
        before = listing(disk)
        argv = _good()(folders, disk) if target == "generate" else _convert()(folders, disk)
        assert_refused(runner.invoke(app, argv), "no space left")
        assert listing(disk) == before


def test_read_only_target_is_one_sentence(folders, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        mounted = folder is not None
        if not mounted:  # not root: permission bits make it read-only
            folder = tmp_path / "ro"
            folder.chmod(0o500)
        assert_refused(runner.invoke(app, _good()(folders, folder)), "not writable")
        assert not list(folder.iterdir())
        if not mounted:
            folder.chmod(0o700)


def _start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlx_imgen.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_during_start_up_prints_interrupted_and_exits_130(delay):
    child = _start("profile", "--sizes", "S", "--batch-sizes", "1", "--trials", "50")
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_ctrl_c_during_a_command_prints_interrupted_and_exits_130(folders, tmp_path):
    child = _start("profile", "--sizes", "S", "--paradigms", "next-token", "--batch-sizes", "1",
                   "--trials", "1000", "--step-budget", "0", "--json", str(tmp_path / "p.json"))
    time.sleep(6)  # past start-up: the sweep is running
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not list(tmp_path.iterdir())
