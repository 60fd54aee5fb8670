"""A corpus of hostile torch.save-style checkpoints, built by hand from pickle opcodes and zip
records (nothing here comes from torch): code-running globals, abuse of every allow-listed
callable, attribute setting on shared objects, recursion, memory and decompression bombs,
broken zip layouts and lying storages. Payloads that would run try to create `marker`."""

import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

# --- pickle opcodes, assembled by hand ---


def text(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -2**31 <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return (pickle.LONG1 + bytes([len(raw)]) if len(raw) < 256
            else pickle.LONG4 + struct.pack("<I", len(raw))) + raw


def floating(x: float) -> bytes:
    return pickle.BINFLOAT + struct.pack(">d", x)


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def stack_glob(module: str, name: str) -> bytes:
    return text(module) + text(name) + pickle.STACK_GLOBAL


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def lst(*items: bytes) -> bytes:
    return pickle.EMPTY_LIST + (pickle.MARK + b"".join(items) + pickle.APPENDS if items else b"")


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + (pickle.MARK + b"".join(k + v for k, v in pairs)
                                + pickle.SETITEMS if pairs else b"")


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + pickle.REDUCE


def pkl(body: bytes, proto: int = 2) -> bytes:
    return pickle.PROTO + bytes([proto]) + body + pickle.STOP


def storage(key="0", numel=4, kind="FloatStorage", module="torch") -> bytes:
    pid = tup(text("storage"), glob(module, kind), text(key) if isinstance(key, str) else key,
              text("cpu"), numel if isinstance(numel, bytes) else integer(numel))
    return pid + pickle.BINPERSID


def ints(values) -> bytes:
    return tup(*(v if isinstance(v, bytes) else integer(v) for v in values))


def tensor(store=None, offset=0, size=(4,), stride=(1,)) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), store or storage(),
                offset if isinstance(offset, bytes) else integer(offset),
                size if isinstance(size, bytes) else ints(size),
                stride if isinstance(stride, bytes) else ints(stride),
                pickle.NEWFALSE, call(glob("collections", "OrderedDict")))


def state(*pairs) -> bytes:
    """A state dict {name: value} as torch writes it."""
    return dct(*((text(k), v) for k, v in pairs))


FLOATS = np.arange(4, dtype=np.float32).tobytes()
GOOD = pkl(state(("w", tensor())))

# --- zip layouts ---


def write_zip(path: Path, pickle_bytes: bytes | None, storages=None, extra=(),
              compression=zipfile.ZIP_STORED, prefix="archive/"):
    with zipfile.ZipFile(path, "w", compression) as zf:
        if pickle_bytes is not None:
            zf.writestr(prefix + "data.pkl", pickle_bytes)
        zf.writestr(prefix + "byteorder", "little")
        for key, data in ({"0": FLOATS} if storages is None else storages).items():
            zf.writestr(f"{prefix}data/{key}", data)
        for name, data in extra:
            zf.writestr(name, data)


def raw_zip(entries, claimed_entries=None, cd_offset_shift=0) -> bytes:
    """A zip written record by record: entries are (name, data, method, header_offset or None,
    declared size or None), so offsets, sizes and counts can lie."""
    body, central = b"", b""
    for name, data, method, header_offset, declared in entries:
        raw = name.encode()
        crc = zlib.crc32(data)
        size = len(data) if declared is None else declared
        offset = len(body) if header_offset is None else header_offset
        if header_offset is None:
            body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                                len(data), size, len(raw), 0) + raw + data
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                               len(data), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    count = len(entries) if claimed_entries is None else claimed_entries
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                      len(central), len(body) + cd_offset_shift, 0)
    if count >= 0xFFFF:  # a zip64 end record carries the real count
        zip64_at = len(body) + len(central)
        end = (struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                           len(central), len(body))
               + struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1) + end)
    return body + central + end


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def zeros_deflated(nbytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(2**20)
    out = [packer.compress(chunk) for _ in range(nbytes // len(chunk))]
    return b"".join(out) + packer.flush()


def nested(open_op: bytes, close_op: bytes, depth: int) -> bytes:
    return open_op * depth + close_op * (depth - 1)


# --- the corpus ---

CODE_GLOBALS = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("builtins", "compile"), ("builtins", "setattr"),
    ("builtins", "globals"), ("builtins", "type"), ("builtins", "object"),
    ("__builtin__", "eval"), ("subprocess", "Popen"), ("subprocess", "call"),
    ("subprocess", "check_output"), ("functools", "partial"), ("torch", "load"),
    ("torch.serialization", "load"), ("numpy", "load"), ("numpy.core.multiarray", "_reconstruct"),
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("pickle", "loads"),
    ("_pickle", "loads"), ("shutil", "rmtree"), ("runpy", "_run_code"), ("sys", "exit"),
    ("collections", "defaultdict"), ("torch._utils", "_rebuild_tensor"),
    ("torch.storage", "_load_from_bytes"), ("torch.nn", "Module"), ("webbrowser", "open"),
    ("mlx_imgen.weights.torch_pickle", "_load"), ("mlx.core", "load"),
]


def payload_args(module: str, name: str, marker: Path) -> list[bytes]:
    if name in ("eval", "exec", "compile"):
        return [text(f"open({str(marker)!r}, 'w')")] + ([text("x"), text("exec")]
                                                        if name == "compile" else [])
    if name in ("open", "rmtree", "load", "_load", "loads"):
        return [text(str(marker)), text("w")] if name == "open" else [text(str(marker))]
    if name in ("Popen", "call", "check_output"):
        return [lst(text("touch"), text(str(marker)))]
    return [text(f"touch {marker}")]


def corpus(folder: Path, marker: Path) -> dict[str, Path]:
    """Write every hostile checkpoint into folder; {case name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Path] = {}

    def add(name, pickle_bytes=None, storages=None, raw=None, **zip_options):
        path = folder / f"{name}.pt"
        if raw is not None:
            path.write_bytes(raw)
        else:
            write_zip(path, pickle_bytes, storages, **zip_options)
        cases[name] = path

    def payload(module, name):
        return call(glob(module, name), *payload_args(module, name, marker))

    # code-running globals, by every opcode that reaches a global or calls
    for module, name in CODE_GLOBALS:
        add(f"global-{module}.{name}", pkl(state(("w", payload(module, name)))))
    for module, name in [("os", "system"), ("builtins", "eval"), ("builtins", "exec")]:
        add(f"stack-global-{name}", pkl(stack_glob(module, name) + tup(
            *payload_args(module, name, marker)) + pickle.REDUCE, proto=4))
    add("inst-os-system", pickle.MARK + text(f"touch {marker}") + b"ios\nsystem\n" + b".")
    add("obj-os-system", pkl(pickle.MARK + glob("os", "system") + text(f"touch {marker}")
                             + pickle.OBJ))
    add("newobj-os-system", pkl(glob("os", "system") + tup(text(f"touch {marker}"))
                                + pickle.NEWOBJ))
    add("newobj-ex", pkl(glob("builtins", "object") + tup() + dct() + pickle.NEWOBJ_EX, 4))
    add("ext1-copyreg", pkl(pickle.EXT1 + b"\x01" + tup(text(f"touch {marker}"))
                            + pickle.REDUCE))
    add("ext4-copyreg", pkl(pickle.EXT4 + struct.pack("<i", 2**30)))
    add("persid-text", pkl(pickle.PERSID + b"0\n"))
    add("global-hidden-in-tensor-key", pkl(state(("w", tensor()), ("x", payload("os", "system")))))

    # abuse of each allow-listed callable
    rebuild = glob("torch._utils", "_rebuild_tensor_v2")
    add("bytearray-huge-int", pkl(call(glob("builtins", "bytearray"), integer(10**12))))
    add("bytearray-newobj", pkl(glob("builtins", "bytearray") + tup(integer(10**12))
                                + pickle.NEWOBJ))
    add("bytearray8-huge", pkl(pickle.BYTEARRAY8 + struct.pack("<Q", 2**40)))
    add("set-huge-int", pkl(call(glob("builtins", "set"), integer(10**12))))
    add("set-deep-tuple", pkl(call(glob("builtins", "set"), lst(
        pickle.EMPTY_TUPLE + pickle.TUPLE1 * 100_000))))
    add("frozenset-of-lists", pkl(call(glob("builtins", "frozenset"), lst(lst()))))
    add("slice-of-slices", pkl(call(glob("builtins", "slice"), call(
        glob("builtins", "slice"), call(glob("builtins", "slice"), integer(1))))))
    add("complex-from-string", pkl(call(glob("builtins", "complex"), text("1e99999999"))))
    add("complex-huge-int", pkl(call(glob("builtins", "complex"), integer(2**70000))))
    add("ordereddict-deep-key", pkl(call(glob("collections", "OrderedDict"), lst(
        tup(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 100_000, integer(1))))))
    add("codecs-utf16", pkl(call(glob("_codecs", "encode"), text("x"), text("utf-16"))))
    add("codecs-rot13", pkl(call(glob("_codecs", "encode"), text("x"), text("rot13"))))
    for spec in ["V10000000000", "O", "S2000000000", "(1000000000,)f8", "f8,O", "U99999999999"]:
        add(f"numpy-dtype-{spec.replace('(', '').replace(')', '').replace(',', '_')}",
            pkl(call(glob("numpy", "dtype"), text(spec), pickle.NEWFALSE, pickle.NEWTRUE)))
    add("numpy-dtype-list-spec", pkl(call(glob("numpy", "dtype"), lst(tup(text("a"), text("O"))))))
    add("numpy-scalar-short-data", pkl(call(glob("numpy.core.multiarray", "scalar"), call(
        glob("numpy", "dtype"), text("f8")), pickle.SHORT_BINBYTES + b"\x01a")))
    add("torch-size-huge", pkl(call(glob("torch", "Size"), integer(10**12))))
    add("torch-size-negative", pkl(call(glob("torch", "Size"), lst(integer(-1)))))
    add("namespace-with-args", pkl(call(glob("argparse", "Namespace"), dct((text("a"),
                                                                              integer(1))))))
    add("call-tensor-class", pkl(call(glob("torch", "Tensor"), integer(10**9))))
    add("call-storage-type", pkl(call(glob("torch", "FloatStorage"), integer(10**12))))
    add("call-untyped-storage", pkl(call(glob("torch.storage", "UntypedStorage"),
                                         integer(10**12))))
    add("newobj-ordereddict", pkl(glob("collections", "OrderedDict") + tup() + pickle.NEWOBJ))
    add("newobj-numpy-dtype", pkl(glob("numpy", "dtype") + tup(text("f4")) + pickle.NEWOBJ))
    add("rebuild-from-type-eval", pkl(call(glob("torch._tensor", "_rebuild_from_type_v2"),
                                           glob("collections", "OrderedDict"),
                                           glob("torch", "Tensor"), tup())))
    add("rebuild-from-type-bad-type", pkl(call(glob("torch._tensor", "_rebuild_from_type_v2"),
                                               rebuild, glob("torch", "FloatStorage"), tup())))
    add("rebuild-parameter-not-tensor", pkl(call(glob("torch._utils", "_rebuild_parameter"),
                                                 text("x"), pickle.NEWFALSE, dct())))
    add("rebuild-v3-string-dtype", pkl(call(
        glob("torch._utils", "_rebuild_tensor_v3"), storage(kind="UntypedStorage",
                                                            module="torch.storage", numel=16),
        integer(0), ints([4]), ints([1]), pickle.NEWFALSE, dct(), text("float32"))))

    # attribute setting (BUILD) and item setting on allow-listed, shared objects
    set_defaults = tup(pickle.NONE, dct((text("__defaults__"), tup(pickle.NEWTRUE))))
    for module, name in [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                         ("argparse", "Namespace"), ("numpy", "dtype"), ("builtins", "set"),
                         ("torch", "Tensor"), ("torch", "FloatStorage"), ("torch", "float32"),
                         ("torch.storage", "UntypedStorage"), ("_codecs", "encode")]:
        add(f"build-on-{module}.{name}",
            pkl(glob(module, name) + set_defaults + pickle.BUILD + pickle.POP + GOOD[2:-1]))
    add("build-dict-on-function", pkl(rebuild + dct((text("x"), integer(1))) + pickle.BUILD))
    add("build-on-tensor", pkl(tensor() + dct((text("shape"), ints([10**9]))) + pickle.BUILD))
    add("build-on-numpy-dtype-instance", pkl(call(glob("numpy", "dtype"), text("f4"))
                                             + tup(integer(3), text("O")) + pickle.BUILD))
    add("build-dunder-on-ordereddict", pkl(call(glob("collections", "OrderedDict"))
                                           + dct((text("__class__"), rebuild)) + pickle.BUILD))
    add("build-slotstate-on-namespace", pkl(glob("argparse", "Namespace") + tup() + pickle.NEWOBJ
                                            + set_defaults + pickle.BUILD))
    add("setitems-on-function", pkl(rebuild + pickle.MARK + text("a") + integer(1)
                                    + pickle.SETITEMS))
    add("appends-on-bytearray-class", pkl(glob("builtins", "bytearray") + pickle.MARK
                                          + integer(1) + pickle.APPENDS))
    add("additems-on-frozenset-class", pkl(glob("builtins", "frozenset") + pickle.MARK
                                           + integer(1) + pickle.ADDITEMS))
    add("function-in-result", pkl(state(("w", tensor()), ("f", rebuild))))
    add("storage-in-result", pkl(state(("w", storage()))))

    # recursion and nesting
    for depth in (100_000, 1_000_000):
        add(f"nested-lists-{depth}", pkl(nested(pickle.EMPTY_LIST, pickle.APPEND, depth)))
    add("nested-tuples-1000000", pkl(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 1_000_000))
    add("nested-dicts-300000", pkl(pickle.EMPTY_DICT + (text("a") + pickle.EMPTY_DICT) * 300_000
                                   + pickle.SETITEM * 300_000))
    add("nested-namespaces", pkl((glob("argparse", "Namespace") + tup() + pickle.NEWOBJ
                                    + pickle.EMPTY_DICT + text("a")) * 200_000
                                 + pickle.NONE + (pickle.SETITEM + pickle.BUILD) * 200_000))
    add("nested-tuple-dict-key", pkl(pickle.EMPTY_DICT + pickle.EMPTY_TUPLE
                                     + pickle.TUPLE1 * 500_000 + integer(1) + pickle.SETITEM))
    add("self-containing-list", pkl(pickle.EMPTY_LIST + pickle.BINPUT + b"\x00"
                                    + pickle.BINGET + b"\x00" + pickle.APPEND))
    add("self-containing-dict", pkl(pickle.EMPTY_DICT + pickle.BINPUT + b"\x00" + text("a")
                                    + pickle.BINGET + b"\x00" + pickle.SETITEM))
    # dict i holds 10 keys that all point at dict i+1: 10**30 dotted keys when flattened
    dag = pickle.EMPTY_DICT + pickle.BINPUT + b"\x00"
    for level in range(30):
        dag += pickle.EMPTY_DICT + pickle.LONG_BINPUT + struct.pack("<I", level + 1)
        dag += pickle.POP + pickle.LONG_BINGET + struct.pack("<I", level) + pickle.MARK
        for k in range(10):
            dag += text(str(k)) + pickle.LONG_BINGET + struct.pack("<I", level + 1)
        dag += pickle.SETITEMS + pickle.POP
    add("shared-dict-explosion", pkl(dag + pickle.BINGET + b"\x00"))
    many = pickle.MARK + b"".join(text(f"k{i}") + pickle.BINGET + b"\x01" for i in range(4000))
    add("shared-tensor-explosion", pkl(tensor(size=(2**22,), stride=(0,)) + pickle.BINPUT
                                       + b"\x01" + pickle.POP + pickle.EMPTY_DICT + many
                                       + pickle.SETITEMS))
    add("many-marks", pkl(pickle.MARK * 3_000_000))

    # memory and time bombs in the pickle itself
    add("memo-put-4g-index", pkl(pickle.NONE + pickle.LONG_BINPUT + b"\xff\xff\xff\xff"))
    add("memo-many-puts", pkl(pickle.NONE + b"".join(
        pickle.LONG_BINPUT + struct.pack("<I", i) for i in range(2_100_000))))
    add("op-count-bomb", pkl((pickle.NONE + pickle.POP) * 1_100_000))
    add("dup-bomb", pkl(pickle.EMPTY_LIST + pickle.MARK + pickle.NONE + pickle.DUP * 2_500_000
                        + pickle.APPENDS))
    add("empty-sets-bomb", pkl(pickle.EMPTY_LIST + pickle.MARK + pickle.EMPTY_SET * 2_500_000
                               + pickle.APPENDS))
    add("binunicode8-huge-length", pkl(pickle.BINUNICODE8 + struct.pack("<Q", 2**62) + b"ab"))
    add("binbytes8-huge-length", pkl(pickle.BINBYTES8 + struct.pack("<Q", 2**63 - 1) + b"ab"))
    add("text-long-million-digits", pkl(pickle.LONG + b"9" * 1_000_000 + b"L\n"))
    add("text-int-hex-million", pkl(pickle.INT + b"0x" + b"f" * 1_000_000 + b"\n"))
    add("frame-huge", pkl(pickle.FRAME + struct.pack("<Q", 2**63) + pickle.NONE, 4))
    add("pickle-larger-than-limit", pkl(pickle.BINBYTES + struct.pack("<I", 70 * 2**20)
                                        + bytes(70 * 2**20)), compression=zipfile.ZIP_DEFLATED)

    # views that expand or leave their storage
    add("stride0-terabyte", pkl(state(("w", tensor(size=(10**6, 10**6), stride=(0, 0))))))
    add("overlapping-view-64mb", pkl(state(("w", tensor(storage(numel=4096), size=(4096, 4096),
                                                        stride=(1, 1))))),
        {"0": bytes(4 * 8192)})
    add("stride-past-storage", pkl(state(("w", tensor(size=(4,), stride=(10**6,))))))
    add("offset-past-storage", pkl(state(("w", tensor(offset=2**62)))))
    add("offset-negative", pkl(state(("w", tensor(offset=-1)))))
    add("offset-float", pkl(state(("w", tensor(offset=floating(0.0))))))
    add("size-bool", pkl(state(("w", tensor(size=(pickle.NEWTRUE,))))))
    add("size-float", pkl(state(("w", tensor(size=(floating(4.0),))))))
    add("size-none", pkl(state(("w", tensor(size=(pickle.NONE,))))))
    add("size-huge-int", pkl(state(("w", tensor(size=(2**200,), stride=(0,))))))
    add("stride-negative", pkl(state(("w", tensor(size=(4,), stride=(-1,))))))
    add("size-stride-mismatch", pkl(state(("w", tensor(size=(2, 2), stride=(1,))))))
    add("ndim-65", pkl(state(("w", tensor(size=(1,) * 65, stride=(1,) * 65)))))
    add("size-is-list", pkl(state(("w", tensor(size=lst(integer(4)))))))
    add("tensor-storage-is-string", pkl(state(("w", tensor(store=text("0"))))))

    # lying storages and persistent ids
    add("storage-numel-past-member", pkl(state(("w", tensor(storage(numel=10**9),
                                                            size=(10**9,))))))
    add("storage-member-missing", pkl(state(("w", tensor(storage(key="7"))))))
    add("storage-key-dotdot", pkl(state(("w", tensor(storage(key="../../etc/passwd"))))))
    add("storage-key-int", pkl(state(("w", tensor(storage(key=integer(0)))))))
    add("storage-numel-negative", pkl(state(("w", tensor(storage(numel=-4))))))
    add("storage-numel-float", pkl(state(("w", tensor(storage(numel=floating(4.0)))))))
    add("storage-numel-huge", pkl(state(("w", tensor(storage(numel=2**80))))))
    add("storage-type-string", pkl(state(("w", tensor(tup(text("storage"), text("FloatStorage"),
                                                          text("0"), text("cpu"), integer(4))
                                                      + pickle.BINPERSID)))))
    add("storage-two-dtypes", pkl(state(("a", tensor()), ("b", tensor(storage(kind="HalfStorage",
                                                                              numel=8))))))
    add("persid-string", pkl(text("storage") + pickle.BINPERSID))
    add("persid-short-tuple", pkl(tup(text("storage")) + pickle.BINPERSID))
    add("persid-list", pkl(lst(text("storage"), glob("torch", "FloatStorage"), text("0"),
                               text("cpu"), integer(4)) + pickle.BINPERSID))

    # broken zip layouts
    good_zip = folder / "good.zip"
    write_zip(good_zip, GOOD)
    whole = good_zip.read_bytes()
    good_zip.unlink()
    add("zip-truncated-half", raw=whole[: len(whole) // 2])
    add("zip-truncated-end", raw=whole[:-10])
    add("zip-only-eocd", raw=b"PK\x05\x06" + bytes(18))
    add("zip-empty-file", raw=b"")
    add("zip-garbage", raw=bytes(range(256)) * 8)
    add("zip-duplicate-data-pkl", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None),
                                               ("archive/data.pkl", pkl(payload("os", "system")),
                                                0, None, None),
                                               ("archive/data/0", FLOATS, 0, None, None)]))
    add("zip-two-pickle-folders", raw=raw_zip([("a/data.pkl", GOOD, 0, None, None),
                                               ("b/data.pkl", GOOD, 0, None, None),
                                               ("a/data/0", FLOATS, 0, None, None)]))
    add("zip-data-pkl-missing", None)
    add("zip-data-pkl-nested-deeper", GOOD, prefix="a/b/")
    add("zip-header-offset-past-end", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None),
                                                   ("archive/data/0", FLOATS, 0, 10**6, None)]))
    add("zip-storage-overlaps-pickle", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None),
                                                    ("archive/data/0", FLOATS, 0, 0, None)]))
    add("zip-pickle-header-offset-lie", raw=raw_zip([("archive/data.pkl", GOOD, 0, 5, None),
                                                     ("archive/data/0", FLOATS, 0, None, None)]))
    add("zip-claims-10-billion-entries", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None)],
                                                     claimed_entries=10**10))
    add("zip-claims-70000-entries", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None)],
                                                claimed_entries=70_000))
    add("zip-directory-offset-lie", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None)],
                                                cd_offset_shift=10**9))
    add("zip-unknown-compression", raw=raw_zip([("archive/data.pkl", GOOD, 99, None, None)]))
    add("zip-bad-byteorder", raw=raw_zip([("archive/data.pkl", GOOD, 0, None, None),
                                          ("archive/byteorder", b"sideways", 0, None, None),
                                          ("archive/data/0", FLOATS, 0, None, None)]))

    # decompression bombs
    add("deflated-storage-200mb-zeros", raw=raw_zip([
        ("archive/data.pkl", pkl(state(("w", tensor(storage(numel=50 * 2**20),
                                                    size=(50 * 2**20,))))), 0, None, None),
        ("archive/data/0", zeros_deflated(200 * 2**20), 8, None, 200 * 2**20)]))
    kernel = zeros_deflated(15 * 2**20)
    overlapping = [("archive/data.pkl", pkl(state(*((f"w{i}", tensor(storage(key=str(i),
                                                                             numel=15 * 2**18),
                                                                     size=(15 * 2**18,)))
                                                    for i in range(200)))), 0, None, None),
                   ("archive/data/0", kernel, 8, None, 15 * 2**20)]
    overlapping += [(f"archive/data/{i}", kernel, 8, 10**9, 15 * 2**20) for i in range(1, 200)]
    zipped = raw_zip(overlapping)
    # point every later entry's header at the first storage's (overlapping members)
    first = zipped.index(b"PK\x03\x04", 1)
    add("deflated-overlapping-members", raw=zipped.replace(struct.pack("<I", 10**9),
                                                           struct.pack("<I", first)))
    add("deflated-declared-size-lie", raw=raw_zip([
        ("archive/data.pkl", GOOD, 0, None, None),
        ("archive/data/0", deflate(FLOATS), 8, None, 2**31)]))
    return cases
