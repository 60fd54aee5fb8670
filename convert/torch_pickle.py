"""Read torch.save (zip format) checkpoints without torch and without running pickled code.
Tensors come back as LazyTensor leaves whose bytes stay memory-mapped until asked for."""
import collections
import io
import os
import pickle
import struct
import types
import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list, so it may execute code."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Also a FileNotFoundError so callers using either idiom catch it."""


class _Malformed(Exception):
    """Raised while unpickling; load_pt adds the path, which the helpers do not know."""


# torch dtype name -> numpy type code of one element; None means numpy has no equivalent.
_DTYPES = {
    "float32": "f4", "float16": "f2", "bfloat16": "u2", "float64": "f8", "int64": "i8",
    "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "b1",
    "complex64": "c8", "complex128": "c16", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "float8_e4m3fn": None, "float8_e5m2": None, "float8_e4m3fnuz": None,
    "float8_e5m2fnuz": None, "float8_e8m0fnu": None,
}
_STORAGE_TYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


# Immutable, uncallable stand-ins: a pickle's BUILD cannot alter them (some are shared
# module constants) and REDUCE cannot call them. dtype None marks an untyped byte storage.
_TorchType = collections.namedtuple("_TorchType", "dtype")
_Storage = collections.namedtuple("_Storage", "raw dtype where order")


class LazyTensor:
    """A tensor whose bytes are read from the checkpoint only when numpy()/to_mlx() is called."""

    __slots__ = ("dtype", "shape", "_storage", "_offset", "_stride")

    def __init__(self, storage, offset, size, stride, dtype):
        # Validate everything here because as_strided trusts its arguments blindly:
        # a hostile stride would otherwise read memory outside the mapped file.
        ints = lambda t: isinstance(t, tuple) and all(type(x) is int and x >= 0 for x in t)
        if not (isinstance(storage, _Storage) and type(offset) is int and offset >= 0
                and ints(size) and ints(stride) and len(size) == len(stride)
                and dtype in _DTYPES):
            raise _Malformed("a tensor record has invalid storage, offset, size, stride or dtype")
        self.dtype, self.shape = dtype, size
        self._storage, self._offset, self._stride = storage, offset, stride
        code = _DTYPES[dtype]
        if code and 0 not in size:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.raw.size // np.dtype(code).itemsize:
                raise _Malformed(f"tensor data runs past the end of {storage.where}")

    def __setstate__(self, state):
        # BUILD would otherwise let the pickle rewrite fields after they were validated.
        raise _Malformed("the pickle tries to overwrite a tensor's fields")

    def __repr__(self):
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"

    def _array(self):
        code = _DTYPES[self.dtype]
        if code is None:
            raise CheckpointError(
                f"{self._storage.where} holds a {self.dtype} tensor, which numpy cannot "
                "represent; convert it to bfloat16 or float16 with torch before loading.")
        dt = np.dtype(code).newbyteorder(self._storage.order)
        raw = self._storage.raw
        flat = raw[: raw.size - raw.size % dt.itemsize].view(dt)
        view = np.lib.stride_tricks.as_strided(
            flat[self._offset:], self.shape, tuple(s * dt.itemsize for s in self._stride),
            writeable=False)
        # Copying detaches the result from the mmap and makes it native-endian and contiguous.
        return np.array(view, dtype=dt.newbyteorder("="), order="C", copy=True)

    def numpy(self):
        arr = self._array()
        # bfloat16 is the top half of a float32, so the shift is exact.
        return (arr.astype(np.uint32) << 16).view(np.float32) if self.dtype == "bfloat16" else arr

    def to_mlx(self):
        import mlx.core as mx
        arr = mx.array(self._array())
        return arr.view(mx.bfloat16) if self.dtype == "bfloat16" else arr


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return LazyTensor(storage, offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, _TorchType):
        raise _Malformed("a tensor record names an unknown dtype")
    return LazyTensor(storage, offset, size, stride, dtype.dtype)


def _latin1_bytes(text, encoding):
    # Protocol 2 spells bytes objects as _codecs.encode(text, "latin1").
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _Malformed("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


class _NumpyDType:
    """Stand-in for numpy.dtype so the pickle's BUILD step cannot reach numpy internals."""

    def __init__(self, spec, align=False, copy=False):
        dt = np.dtype(spec) if isinstance(spec, str) else None
        if dt is None or dt.hasobject:
            raise _Malformed("only plain numpy dtypes are allowed")
        self.dtype = dt

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data):
    if not (isinstance(dtype, _NumpyDType) and isinstance(data, bytes)
            and len(data) == dtype.dtype.itemsize):
        raise _Malformed("a numpy scalar record is malformed")
    return np.frombuffer(data, dtype.dtype)[0]


_TENSOR_CLASS = _TorchType("tensor-class")


def _rebuild_from_type(func, new_type, args, state=None):
    # torch wraps a tensor with Python attributes (FSDP's 3B checkpoint has some) in this record;
    # rebuild the plain tensor with one of our own rebuild functions and drop the attributes.
    if func not in (_rebuild_v2, _rebuild_v3, _rebuild_parameter) or new_type is not _TENSOR_CLASS:
        raise _Malformed("a tensor subclass record names an unknown rebuild function or class")
    return func(*args)


def _rebuild_parameter(data, *_):
    return data


_SAFE_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "torch.Tensor": _TENSOR_CLASS,
    "torch.nn.parameter.Parameter": _TENSOR_CLASS,
    "torch.storage.UntypedStorage": _TorchType(None),
    "torch.storage.TypedStorage": _TorchType(None),
    "torch.Size": tuple,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice,
    "builtins.complex": complex, "builtins.bytearray": bytearray,
    "argparse.Namespace": types.SimpleNamespace,
    "_codecs.encode": _latin1_bytes,
    "numpy.dtype": _NumpyDType,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, path, zf, prefix):
        super().__init__(io.BytesIO(zf.read(prefix + "data.pkl")))
        self._path, self._zf, self._prefix, self._storages, self._map = path, zf, prefix, {}, None
        names = zf.namelist()
        big = prefix + "byteorder" in names and zf.read(prefix + "byteorder") == b"big"
        self._order = ">" if big else "<"

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module
        qualname = f"{module}.{name}"
        if qualname in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualname]
        if module == "torch" and (name in _STORAGE_TYPES or name in _DTYPES):
            return _TorchType(_STORAGE_TYPES.get(name, name))
        raise UnsafeCheckpointError(
            f"{self._path} asks to run {qualname} while loading; refusing to load it "
            "(only tensors and plain containers are allowed).")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _TorchType) and isinstance(pid[2], str)):
            raise _Malformed(f"unsupported persistent id {pid!r:.80}")
        key = pid[2]
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            raw = self._read_member(self._zf.getinfo(member))
            self._storages[key] = _Storage(raw, pid[1].dtype, f"{self._path}:{member}",
                                           self._order)
        return self._storages[key]

    def _read_member(self, info):
        if info.compress_type != zipfile.ZIP_STORED:
            return np.frombuffer(self._zf.read(info), dtype=np.uint8)
        # Read the local header ourselves: its extra field can differ from the central
        # directory's, and that decides where the data really starts.
        with open(self._path, "rb") as fh:
            fh.seek(info.header_offset)
            sig, *_, name_len, extra_len = struct.unpack("<4s5H3I2H", fh.read(30))
        start = info.header_offset + 30 + name_len + extra_len
        if self._map is None:  # one map of the whole file keeps a single descriptor open
            self._map = np.memmap(self._path, dtype=np.uint8, mode="r")
        if sig != b"PK\x03\x04" or start + info.file_size > self._map.size:
            raise _Malformed(f"storage {info.filename} lies outside the file")
        return self._map[start: start + info.file_size]


def _sniff_failure(path, head):
    if head[:4] == b"PK\x03\x04":
        return (f"{path} is truncated or corrupt (its zip directory is unreadable); "
                "download or re-save it.")
    # Pre-1.6 files start with a pickled magic number; the oldest ones are tar archives.
    if head.startswith(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19") or head[257:262] == b"ustar":
        return (f"{path} uses the legacy (pre-1.6, non-zip) torch.save format, which is not "
                "supported; re-save it with torch >= 1.6 via torch.save(torch.load(path), new).")
    if head[8:9] == b"{":
        return (f"{path} is a safetensors file, not a PyTorch checkpoint; "
                "load it with the safetensors loader instead.")
    return (f"{path} is not a PyTorch checkpoint (expected a zip archive written by torch.save); "
            "pass a .pt/.pth file or a .safetensors file.")


def load_pt(path):
    """Unpickle a torch.save checkpoint into plain containers with LazyTensor leaves."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path} does not exist or is not a file; check the path.")
    with open(path, "rb") as fh:
        head = fh.read(512)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise CheckpointError(_sniff_failure(path, head)) from None
    with zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl "
                "inside); pass a .pt/.pth file written by torch.save.")
        try:
            return _RestrictedUnpickler(path, zf, pickles[0][: -len("data.pkl")]).load()
        except CheckpointError:
            raise
        except (_Malformed, pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError,
                AttributeError, IndexError, OverflowError, struct.error, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path} has a malformed data.pkl ({exc}); re-save it with "
                                  "torch.save or download it again.") from None


def flatten_state_dict(obj, prefix=""):
    """Map dotted keys ("model.layer.weight") to the LazyTensors nested in dicts under obj."""
    if isinstance(obj, LazyTensor):
        return {prefix: obj}
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten_state_dict(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
