"""Read torch.save (zip format) checkpoints without torch and without running pickled code.
Tensors come back as LazyTensor leaves whose bytes stay memory-mapped until asked for.

The file is treated as hostile: the pickle runs on a pure-Python machine with a filtered opcode
table and an allow-list of globals, every count and size is bounded by the limits below, and any
failure reaches the caller as CheckpointError, one sentence naming the file."""
import collections
import io
import math
import os
import pickle
import re
import struct
import types
import zipfile

import numpy as np

# data.pkl holds only structure (names, shapes, numbers): a 2000-tensor state dict pickles to
# about 0.2 MB, so 64 MiB is 300x headroom and bounds every string, bytes and int it holds.
MAX_PICKLE_BYTES = 64 * 2**20
# Each opcode creates at most one small object, so this caps unpickling near 0.5 GB and a few
# seconds; a training checkpoint with optimizer state needs about 100 opcodes per tensor.
MAX_PICKLE_OPS = 2_000_000
# Containers within containers: checkpoints nest fewer than 10 deep; 100 keeps repr, hashing and
# recursive walks of the result far from Python's recursion limit and the C stack.
MAX_NESTING = 100
# torch writes one zip entry per storage plus about 5 more; each entry costs zipfile ~0.5 KB.
MAX_ZIP_ENTRIES = 200_000
# torch and numpy tensors have at most 64 dimensions.
MAX_NDIM = 64
# A stride-0 (expanded) or overlapping view may hold more bytes than its storage, up to this:
# real files save such views only for small buffers, and a 4-byte storage cannot become 1 TB.
EXPANDED_VIEW_BYTES = 16 * 2**20
# All tensors of a flattened state dict together may hold this many times the bytes of their
# distinct storages (tied weights and views share a storage), plus EXPANDED_VIEW_BYTES.
SHARED_VIEW_FACTOR = 4
# torch writes uncompressed members; re-zipped ones may expand this much (weights compress
# < 2x; zero-filled buffers more, and members under EXPANDED_VIEW_BYTES are always allowed).
MAX_COMPRESSION_RATIO = 16
# Dotted keys flatten_state_dict makes: visits and characters (real files: ~1e4 and ~1e5).
MAX_FLATTEN_VISITS = 1_000_000
MAX_FLATTEN_CHARS = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list, so it may execute code."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Also a FileNotFoundError so callers using either idiom catch it."""


class _Malformed(Exception):
    """Raised while unpickling; load_pt adds the path, which the helpers do not know."""


def _clause(text, limit=100):
    """Hostile text made safe inside one sentence: no line breaks or full stops, bounded length."""
    text = re.sub(r"\s+", " ", str(text)).replace(". ", ", ").rstrip(". ")
    return text if len(text) <= limit else text[:limit] + "..."


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


def _itemsize(dtype):
    code = _DTYPES[dtype]
    return np.dtype(code).itemsize if code else 1  # the float8 types


# Immutable, uncallable stand-ins: the pickle can neither call nor alter them.
_TorchType = collections.namedtuple("_TorchType", "dtype")


class _Storage:
    """One storage's bytes: a slice of the file's memory map, or a deflated member read late."""

    __slots__ = ("path", "member", "dtype", "order", "nbytes", "raw")

    def __init__(self, path, member, dtype, order, nbytes, raw):
        self.path, self.member, self.dtype, self.order = path, member, dtype, order
        self.nbytes, self.raw = nbytes, raw

    def data(self):
        if self.raw is None:  # deflated: its size was bounded when the pickle declared it
            with zipfile.ZipFile(self.path) as zf:
                self.raw = np.frombuffer(zf.read(self.member), np.uint8)[: self.nbytes]
            if self.raw.size != self.nbytes:
                raise _Malformed(f"storage {self.member} is shorter than declared")
        return self.raw


def _index(x):
    return type(x) is int and 0 <= x < 2**63


class LazyTensor:
    """A tensor whose bytes are read from the checkpoint only when numpy()/to_mlx() is called."""

    __slots__ = ("dtype", "shape", "nbytes", "_storage", "_offset", "_stride")

    def __init__(self, storage, offset, size, stride, dtype):
        # Validate everything here because as_strided trusts its arguments blindly:
        # a hostile stride would otherwise read memory outside the mapped file.
        if not (type(storage) is _Storage and _index(offset) and type(size) is tuple
                and type(stride) is tuple and len(size) == len(stride) <= MAX_NDIM
                and all(map(_index, size + stride)) and type(dtype) is str and dtype in _DTYPES):
            raise _Malformed("a tensor record has invalid storage, offset, size, stride or dtype")
        self.dtype, self.shape = dtype, size
        self._storage, self._offset, self._stride = storage, offset, stride
        itemsize = _itemsize(dtype)
        self.nbytes = math.prod(size) * itemsize
        if self.nbytes:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if (last + 1) * itemsize > storage.nbytes:
                raise _Malformed(f"tensor data runs past the end of {storage.member}")
            if self.nbytes > max(storage.nbytes, EXPANDED_VIEW_BYTES):
                raise _Malformed(f"a tensor view expands {storage.member} to {self.nbytes} bytes")

    def __repr__(self):
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"

    def _array(self):
        code = _DTYPES[self.dtype]
        if code is None:
            raise CheckpointError(
                f"{self._storage.path} holds a {self.dtype} tensor, which numpy cannot "
                "represent; convert it to bfloat16 or float16 with torch before loading.")
        try:
            dt = np.dtype(code).newbyteorder(self._storage.order)
            raw = self._storage.data()
            flat = raw[: raw.size - raw.size % dt.itemsize].view(dt)
            view = np.lib.stride_tricks.as_strided(
                flat[self._offset:], self.shape, tuple(s * dt.itemsize for s in self._stride),
                writeable=False)
            # Copying detaches the result from the mmap; native-endian and contiguous.
            return np.array(view, dtype=dt.newbyteorder("="), order="C", copy=True)
        except Exception as exc:  # noqa: BLE001 - a file changed or damaged since it was opened
            raise CheckpointError(
                f"{self._storage.path} could not be read at {self._storage.member} "
                f"({type(exc).__name__}: {_clause(exc)}); download it again.") from None

    def numpy(self):
        arr = self._array()
        # bfloat16 is the top half of a float32, so the shift is exact.
        return (arr.astype(np.uint32) << 16).view(np.float32) if self.dtype == "bfloat16" else arr

    def to_mlx(self):
        import mlx.core as mx
        arr = mx.array(self._array())
        return arr.view(mx.bfloat16) if self.dtype == "bfloat16" else arr


# --- What REDUCE and NEWOBJ may call: each checks its arguments, so no allow-listed callable
# can allocate more than the pickle's own bytes justify (bytearray(10**12), set of a deep tuple).

_ATOMS = (str, bytes, int, float, bool, type(None))


def _hashable(key):
    # Scalars or flat tuples of them: hashing a nested tuple recurses in C with no depth check.
    return type(key) in _ATOMS or (type(key) is tuple and all(type(k) in _ATOMS for k in key))


def _check_keys(keys):
    if not all(map(_hashable, keys)):
        raise _Malformed("a dict key or set member is not a plain scalar")
    return keys


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if type(storage) is not _Storage:
        raise _Malformed("a tensor record does not point at a storage")
    return LazyTensor(storage, offset, size, stride, storage.dtype)


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if type(dtype) is not _TorchType:
        raise _Malformed("a tensor record names an unknown dtype")
    return LazyTensor(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, *_):
    if type(data) is not LazyTensor:
        raise _Malformed("a parameter record does not hold a tensor")
    return data


_TENSOR_CLASS = _TorchType("tensor-class")


def _rebuild_from_type(func, new_type, args, state=None):
    # torch wraps a tensor with Python attributes (FSDP's 3B checkpoint has some) in this record;
    # rebuild the plain tensor with one of our own rebuild functions and drop the attributes.
    if (func not in (_rebuild_v2, _rebuild_v3, _rebuild_parameter)
            or new_type is not _TENSOR_CLASS or type(args) is not tuple):
        raise _Malformed("a tensor subclass record names an unknown rebuild function or class")
    return func(*args)


def _latin1_bytes(text, encoding):
    # Protocol 2 spells bytes objects as _codecs.encode(text, "latin1").
    if not (type(text) is str and encoding in ("latin1", "latin-1")):
        raise _Malformed("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


def _ordered_dict(pairs=()):
    if type(pairs) not in (list, tuple) or not all(type(p) in (list, tuple) and len(p) == 2
                                                    for p in pairs):
        raise _Malformed("an OrderedDict record is malformed")
    return collections.OrderedDict(zip(_check_keys([k for k, _ in pairs]), [v for _, v in pairs]))


def _set(items=()):
    if type(items) not in (list, tuple):
        raise _Malformed("a set record is malformed")
    return set(_check_keys(items))


def _frozenset(items=()):
    return frozenset(_set(items))


def _slice(*args):
    if not (1 <= len(args) <= 3 and all(a is None or type(a) is int for a in args)):
        raise _Malformed("a slice record is malformed")
    return slice(*args)


def _complex(real=0.0, imag=0.0):
    if not (type(real) is float and type(imag) is float):
        raise _Malformed("a complex number record is malformed")
    return complex(real, imag)


def _bytearray(data=b"", encoding="latin-1"):
    # bytearray(n) would allocate n bytes: only the copy of a string the pickle holds is allowed.
    if type(data) is str and encoding in ("latin1", "latin-1"):
        data = data.encode("latin1")
    if type(data) is not bytes:
        raise _Malformed("a bytearray record is malformed")
    return bytearray(data)


def _torch_size(dims=()):
    if type(dims) not in (list, tuple) or not all(map(_index, dims)):
        raise _Malformed("a torch.Size record is malformed")
    return tuple(dims)


def _namespace():
    # argparse.Namespace's attributes arrive by BUILD, which sets only plain names.
    return types.SimpleNamespace()


class _NumpyDType:
    """Stand-in for numpy.dtype: only plain numeric types, so no object or giant void dtypes."""

    def __init__(self, spec, align=False, copy=False):
        if not (type(spec) is str and re.fullmatch(r"[biufc]\d{1,2}", spec)):
            raise _Malformed("only plain numeric numpy dtypes are allowed")
        self.dtype = np.dtype(spec)

    def set_byte_order(self, state):
        if not (type(state) is tuple and len(state) > 1 and state[1] in ("<", ">", "|", "=")):
            raise _Malformed("a numpy dtype record is malformed")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data):
    if not (type(dtype) is _NumpyDType and type(data) is bytes
            and len(data) == dtype.dtype.itemsize):
        raise _Malformed("a numpy scalar record is malformed")
    return np.frombuffer(data, dtype.dtype)[0]


_SAFE_GLOBALS = {
    "collections.OrderedDict": _ordered_dict,
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "torch.Tensor": _TENSOR_CLASS,
    "torch.nn.parameter.Parameter": _TENSOR_CLASS,
    "torch.storage.UntypedStorage": _TorchType(None),
    "torch.storage.TypedStorage": _TorchType(None),
    "torch.Size": _torch_size,
    "builtins.set": _set, "builtins.frozenset": _frozenset, "builtins.slice": _slice,
    "builtins.complex": _complex, "builtins.bytearray": _bytearray,
    "argparse.Namespace": _namespace,
    "_codecs.encode": _latin1_bytes,
    "numpy.dtype": _NumpyDType,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
}
_CALLABLES = frozenset(v for v in _SAFE_GLOBALS.values() if callable(v))
# NEWOBJ is how protocol 2 spells argparse.Namespace() and complex(re, im).
_NEWOBJ_CALLABLES = frozenset((_namespace, _complex))
# Types whose instances the pickle may hand back; anything else (an allow-listed function, a
# storage, a dtype marker) in the result means a malformed file.
_DATA_TYPES = frozenset((*_ATOMS, complex, bytearray, slice, LazyTensor, _NumpyDType))
_CONTAINERS = frozenset((dict, collections.OrderedDict, list, tuple, set, frozenset,
                         types.SimpleNamespace))


# --- The pickle machine: CPython's pure-Python unpickler's handlers for plain data, ours for
# everything that calls, mutates or hashes. Opcodes torch never writes and that reach code or
# unbounded allocation (INST, OBJ, EXT*, PERSID, NEWOBJ_EX, BYTEARRAY8, buffers) are left out.
_PLAIN_OPS = (
    "MARK POP POP_MARK DUP FLOAT INT BININT BININT1 LONG BININT2 NONE STRING BINSTRING "
    "SHORT_BINSTRING UNICODE BINUNICODE EMPTY_LIST EMPTY_TUPLE EMPTY_DICT LIST TUPLE GET BINGET "
    "LONG_BINGET PUT BINPUT LONG_BINPUT BINFLOAT PROTO TUPLE1 TUPLE2 TUPLE3 NEWTRUE NEWFALSE "
    "LONG1 LONG4 BINBYTES SHORT_BINBYTES SHORT_BINUNICODE BINUNICODE8 BINBYTES8 EMPTY_SET "
    "MEMOIZE GLOBAL STACK_GLOBAL BINPERSID").split()


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - its opcode table is the point
    dispatch = {getattr(pickle, op)[0]: pickle._Unpickler.dispatch[getattr(pickle, op)[0]]
                for op in _PLAIN_OPS}

    def __init__(self, data, path, fh, members, prefix, order):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._path, self._fh, self._members, self._prefix, self._order = (
            path, fh, members, prefix, order)
        self._storages, self._map, self._inflated = {}, None, 0
        self._archive_bytes = fh.seek(0, os.SEEK_END)

    def load(self):
        self.read, self.readline = self._file_read, self._file_readline
        self.stack, self.metastack = [], []
        self.append = self.stack.append
        for _ in range(MAX_PICKLE_OPS):
            op = self.read(1)
            if not op:
                raise _Malformed("data.pkl ends before its STOP opcode")
            if op == pickle.STOP:
                return self.stack.pop()
            handler = self.dispatch.get(op[0])
            if handler is None:
                raise _Malformed(f"data.pkl uses the pickle opcode {op!r}, which checkpoints "
                                 "never need")
            handler(self)
        raise _Malformed(f"data.pkl runs more than {MAX_PICKLE_OPS} pickle opcodes")

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not (callable(func) and func in _CALLABLES and type(args) is tuple):
            raise _Malformed("the pickle calls something that is not an allowed function")
        self.stack[-1] = func(*args)

    def _newobj(self):
        args = self.stack.pop()
        cls = self.stack[-1]
        if not (callable(cls) and cls in _NEWOBJ_CALLABLES and type(args) is tuple):
            raise _Malformed("the pickle creates an object of a type that is not allowed")
        self.stack[-1] = cls(*args)

    def _build(self):
        # Only objects this pickle created may receive attributes, and only plain names, so
        # no allow-listed function, class or shared constant can be changed.
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is _NumpyDType:
            inst.set_byte_order(state)
        elif (type(inst) in (collections.OrderedDict, types.SimpleNamespace)
              and type(state) is dict
              and all(type(k) is str and not k.startswith("__") for k in state)):
            vars(inst).update(state)
        else:
            raise _Malformed("the pickle sets attributes on an object that does not take them")

    def _setitems(self, items):
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict) or len(items) % 2:
            raise _Malformed("the pickle sets items on something that is not a dict")
        target.update(zip(_check_keys(items[::2]), items[1::2]))

    def _appends(self, items):
        if type(self.stack[-1]) is not list:
            raise _Malformed("the pickle appends to something that is not a list")
        self.stack[-1].extend(items)

    def _additems(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            raise _Malformed("the pickle adds to something that is not a set")
        self.stack[-1].update(_check_keys(items))

    def _dict(self):
        items = self.pop_mark()
        self.append({})
        self._setitems(items)

    def _frozenset(self):
        self.append(frozenset(_check_keys(self.pop_mark())))

    def _frame(self):
        self.read(8)  # frames only group reads; the whole pickle is already in memory

    dispatch.update({
        pickle.REDUCE[0]: _reduce, pickle.NEWOBJ[0]: _newobj, pickle.BUILD[0]: _build,
        pickle.SETITEM[0]: lambda self: self._setitems([self.stack.pop(-2), self.stack.pop()]),
        pickle.SETITEMS[0]: lambda self: self._setitems(self.pop_mark()),
        pickle.APPEND[0]: lambda self: self._appends([self.stack.pop()]),
        pickle.APPENDS[0]: lambda self: self._appends(self.pop_mark()),
        pickle.ADDITEMS[0]: _additems, pickle.DICT[0]: _dict,
        pickle.FROZENSET[0]: _frozenset, pickle.FRAME[0]: _frame,
    })

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module
        qualname = f"{module}.{name}"
        if qualname in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualname]
        if module == "torch" and (name in _STORAGE_TYPES or name in _DTYPES):
            return _TorchType(_STORAGE_TYPES.get(name, name))
        shown = re.sub(r"[^\w.]", "?", qualname[:100])
        raise UnsafeCheckpointError(
            f"{self._path} asks to run {shown} while loading; refusing to load it "
            "(only tensors and plain containers are allowed).")

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"
                and type(pid[1]) is _TorchType and (pid[1].dtype is None or pid[1].dtype in
                                                    _DTYPES)
                and type(pid[2]) is str and _index(pid[4])):
            raise _Malformed("a storage record (persistent id) is malformed")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = self._open_storage(key, dtype, numel)
        # an untyped storage counts bytes, a typed one elements of its dtype
        if (storage.dtype, storage.nbytes) != (dtype, numel * (_itemsize(dtype) if dtype else 1)):
            raise _Malformed(f"storage {_clause(key, 40)} is declared twice, differently")
        return storage

    def _open_storage(self, key, dtype, numel):
        member = f"{self._prefix}data/{key}"
        info = self._members.get(member)
        if info is None:
            raise _Malformed(f"storage {_clause(key, 40)} is missing from the archive")
        nbytes = numel * (_itemsize(dtype) if dtype else 1)
        if nbytes > info.file_size:
            raise _Malformed(f"storage {_clause(key, 40)} declares {nbytes} bytes but holds "
                             f"{info.file_size}")
        if info.compress_type != zipfile.ZIP_STORED:
            self._inflated += info.file_size
            if (info.file_size > max(info.compress_size * MAX_COMPRESSION_RATIO,
                                     EXPANDED_VIEW_BYTES)
                    or self._inflated > MAX_COMPRESSION_RATIO * self._archive_bytes + EXPANDED_VIEW_BYTES):
                raise _Malformed(f"storage {_clause(key, 40)} decompresses to more than the "
                                 "archive can hold")
            return _Storage(self._path, member, dtype, self._order, nbytes, None)
        # Read the local header ourselves: its extra field can differ from the central
        # directory's, and that decides where the data really starts.
        self._fh.seek(info.header_offset)
        sig, *_, name_len, extra_len = struct.unpack("<4s5H3I2H", self._fh.read(30))
        name = self._fh.read(name_len)
        start = info.header_offset + 30 + name_len + extra_len
        if self._map is None:  # one map of the whole file keeps a single descriptor open
            self._map = np.memmap(self._path, dtype=np.uint8, mode="r")
        # a header of another name means members overlap, a classic zip-bomb layout
        if sig != b"PK\x03\x04" or name != member.encode() or start + nbytes > self._map.size:
            raise _Malformed(f"storage {_clause(key, 40)} lies outside the file")
        return _Storage(self._path, member, dtype, self._order, nbytes,
                        self._map[start: start + nbytes])


def _check_result(root):
    """Refuse cycles, nesting deeper than MAX_NESTING, anything but plain data and tensors, and
    dicts whose dotted keys (what flatten_state_dict makes) would exceed the flatten limits:
    a shared dict or tensor repeats under every key that reaches it."""
    done, on_path, todo, storages = {}, set(), [(root, False)], {}
    while todo:
        obj, finished = todo.pop()
        if type(obj) is LazyTensor:
            storages[id(obj._storage)] = obj._storage.nbytes
        elif type(obj) not in _CONTAINERS:
            if type(obj) not in _DATA_TYPES and not isinstance(obj, np.generic):
                raise _Malformed(f"the result holds a {type(obj).__name__}, which is not data")
        elif finished:
            on_path.discard(id(obj))
            done[id(obj)] = _summary(obj, done)
        elif id(obj) in on_path:
            raise _Malformed("a container contains itself")
        elif id(obj) not in done:
            on_path.add(id(obj))
            todo.append((obj, True))
            todo.extend((c, False) for c in _children(obj))
    height, visits, chars, nbytes = done.get(id(root), (0, 1, 0, 0))
    if visits > MAX_FLATTEN_VISITS or chars > MAX_FLATTEN_CHARS:
        raise _Malformed("its dicts hold more nested keys than a checkpoint has")
    if nbytes > SHARED_VIEW_FACTOR * sum(storages.values()) + EXPANDED_VIEW_BYTES:
        raise _Malformed("it repeats its tensors more often than a checkpoint does")


def _children(obj):
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    return vars(obj).values() if type(obj) is types.SimpleNamespace else obj


def _summary(obj, done):
    """(nesting height, flatten visits, flatten key characters, flatten tensor bytes)."""
    height = 1 + max((done[id(c)][0] for c in _children(obj) if type(c) in _CONTAINERS),
                     default=0)
    if height > MAX_NESTING:
        raise _Malformed(f"containers nest more than {MAX_NESTING} deep")
    visits, chars, nbytes = 1, 0, 0
    for key, value in obj.items() if isinstance(obj, dict) else ():
        if type(value) is LazyTensor:
            below = (1, 0, value.nbytes)
        elif isinstance(value, dict):
            below = done[id(value)][1:]
        else:
            continue
        visits += below[0]
        chars += below[0] * (len(str(key)) + 1) + below[1]
        nbytes += below[2]
    return height, visits, chars, nbytes


def _zip_entries(fh):
    """Entry count from the end-of-central-directory record (zip64 included), before zipfile
    builds an object per entry; None when there is no such record (zipfile then refuses)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - 22 - 65535))
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries = struct.unpack_from("<H", tail, at + 10)[0]
    if entries == 0xFFFF and at >= 20 and tail[at - 20: at - 16] == b"PK\x06\x07":
        fh.seek(struct.unpack_from("<Q", tail, at - 12)[0] + 32)
        entries = struct.unpack("<Q", fh.read(8))[0]
    return entries


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


def _load(path, fh):
    head = fh.read(512)
    entries = _zip_entries(fh)
    if entries is not None and entries > MAX_ZIP_ENTRIES:
        raise _Malformed(f"the archive lists {entries} entries, more than a checkpoint has "
                         f"({MAX_ZIP_ENTRIES})")
    try:
        fh.seek(0)
        zf = zipfile.ZipFile(fh)
    except Exception:  # noqa: BLE001 - whatever zipfile trips on, the file is not a good zip
        raise CheckpointError(_sniff_failure(path, head)) from None
    names = zf.namelist()
    if len(set(names)) != len(names):
        raise _Malformed("the archive holds two entries of the same name")
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise CheckpointError(
            f"{path} is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl "
            "inside); pass a .pt/.pth file written by torch.save.")
    if len(pickles) > 1:
        raise _Malformed("the archive holds more than one data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    members = {info.filename: info for info in zf.infolist()}
    info = members[pickles[0]]
    if max(info.file_size, info.compress_size) > MAX_PICKLE_BYTES:
        raise _Malformed(f"data.pkl is larger than {MAX_PICKLE_BYTES // 2**20} MiB")
    order = "<"
    if prefix + "byteorder" in members:
        byteorder = members[prefix + "byteorder"]
        order = {b"little": "<", b"big": ">"}.get(
            zf.read(byteorder) if byteorder.file_size <= 16 else None)
        if order is None:
            raise _Malformed("its byteorder entry is neither little nor big")
    result = _RestrictedUnpickler(zf.read(info), path, fh, members, prefix, order).load()
    _check_result(result)
    return result


def load_pt(path):
    """Unpickle a torch.save checkpoint into plain containers with LazyTensor leaves."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path} does not exist or is not a file; check the path.")
    try:
        with open(path, "rb") as fh:
            return _load(path, fh)
    except CheckpointError:
        raise
    except _Malformed as exc:
        raise CheckpointError(f"{path} is malformed: {exc}; re-save it with torch.save or "
                              "download it again.") from None
    except Exception as exc:  # noqa: BLE001 - the file is hostile: any failure is its fault
        raise CheckpointError(f"{path} has a malformed data.pkl ({type(exc).__name__}: "
                              f"{_clause(exc)}); re-save it with torch.save or download it "
                              "again.") from None


def flatten_state_dict(obj, prefix=""):
    """Map dotted keys ("model.layer.weight") to the LazyTensors nested in dicts under obj.
    load_pt has bounded the nesting, the number of keys and the bytes they reach."""
    out = {}

    def walk(value, key):
        if isinstance(value, LazyTensor):
            out[key] = value
        elif isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, (LazyTensor, dict)):
                    walk(item, f"{key}.{name}" if key else str(name))

    walk(obj, prefix)
    return out
