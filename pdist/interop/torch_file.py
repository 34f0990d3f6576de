"""PyTorch ``.pt``/``.pth`` files read without PyTorch, as untrusted input.

A file downloaded from the internet may hold any pickle, so nothing in it is
trusted: every pickle in the file (the zip format's ``data.pkl``; the legacy
format's magic number, protocol, system info, object and storage keys) goes
through a restricted unpickler that resolves only the names a state dict
needs (``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``, the
typed storage classes, ``collections.OrderedDict``) and nothing callable else.
Each tensor's offset, size and stride are checked against its storage before a
view is taken, each storage's bytes against its declared length; a tensor
may not hold more elements than its storage (no stride-0 blow-up), and the
distinct tensors together at most twice the storages' elements (a parent
and its slices fit; a file cannot make a small storage into many large copies).
Anything else is refused with :class:`TorchFileError`, one sentence.

The two formats (PyTorch's ``torch/serialization.py``):

- zip (PyTorch >= 1.6): ``<root>/data.pkl`` pickles the object, whose storages
  are persistent ids ``("storage", torch.<Type>Storage, key, location, numel)``
  with their raw bytes in the uncompressed record ``<root>/data/<key>``;
  ``<root>/byteorder`` says ``little`` or ``big`` (little when absent).
- legacy (before 1.6): five pickles in a row (the magic number
  ``0x1950A86A20F9469CFC6C``, the protocol version 1001, system info with
  ``little_endian``, the object, the list of storage keys), then for each key
  its element count (int64) and its bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from pdist.errors import InputError

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(InputError, ValueError):
    """A PyTorch file that pdist refuses to read: malformed, or holding more than a state dict."""


def read_state_dict(path: str) -> dict[str, Any]:
    """The object of a PyTorch file as nested dicts of numpy arrays (and plain scalars and strings).

    Raises :class:`TorchFileError` (one sentence naming the file) for anything a state dict does not hold.
    """
    with open(path, "rb") as f:
        return _read(f, path)


def read_state_dict_bytes(data: bytes, name: str = "This file") -> dict[str, Any]:
    """:func:`read_state_dict` of a file's bytes (``name`` is what the error says)."""
    return _read(io.BytesIO(data), name)


def _read(f, path: str) -> dict[str, Any]:
    try:
        if zipfile.is_zipfile(f):
            f.seek(0)
            return _read_zip(f)
        f.seek(0)
        return _read_legacy(f)
    except TorchFileError as e:
        raise TorchFileError(f"{path} is not a state dict pdist can read safely: {e}") from None
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as e:  # a malformed pickle or archive, whatever the exception it raises
        raise TorchFileError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {e}).") from None


@dataclasses.dataclass(eq=False)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    array: np.ndarray | None = None  # filled from the file's bytes once the object is unpickled


@dataclasses.dataclass(eq=False)
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _int(value, what: str) -> int:
    if type(value) is not int:
        raise TorchFileError(f"a tensor's {what} is {type(value).__name__}, not an integer")
    return value


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
    """``torch._utils._rebuild_tensor_v2``: checked now, built once the storage holds its bytes."""
    if not isinstance(storage, _Storage):
        raise TorchFileError("a tensor's storage is not a storage record")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise TorchFileError("a tensor's size and stride are not tuples of one length")
    offset = _int(offset, "offset")
    size = tuple(_int(s, "size") for s in size)
    stride = tuple(_int(s, "stride") for s in stride)
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchFileError(f"a tensor has a negative offset, size or stride ({offset}, {size}, {stride})")
    numel = int(np.prod(size, dtype=object)) if size else 1
    if numel > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.numel:
            raise TorchFileError(
                f"a tensor of size {size}, stride {stride} at offset {offset} reaches element {last} "
                f"of storage {storage.key!r}, which holds {storage.numel}"
            )
    elif offset > storage.numel:
        raise TorchFileError(f"an empty tensor starts at {offset}, past storage {storage.key!r}'s {storage.numel}")
    if numel > storage.numel:
        raise TorchFileError(f"a tensor of {numel} elements views storage {storage.key!r} of {storage.numel}")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its tensor."""
    if not isinstance(data, _Tensor):
        raise TorchFileError("a parameter holds no tensor")
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only a state dict's names; ``storages`` collects the storage records by key."""

    NAMES = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("torch", name): name for name in STORAGE_DTYPES},  # a type name, resolved in persistent_load
    }

    def __init__(self, file, *, big_endian: bool, legacy: bool):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}
        self._big_endian = big_endian
        self._legacy = legacy

    def find_class(self, module, name):
        try:
            return self.NAMES[(module, name)]
        except (KeyError, TypeError):
            raise TorchFileError(f"it names {module}.{name}, which no state dict holds") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == (6 if self._legacy else 5) and pid[0] == "storage"):
            raise TorchFileError(f"it holds a persistent id {pid!r:.80} that is not a storage")
        _, type_name, key, location, numel = pid[:5]
        if type_name not in STORAGE_DTYPES:
            raise TorchFileError(f"storage type {type_name!r:.40} is not one of {sorted(STORAGE_DTYPES)}")
        if not isinstance(key, str) or not isinstance(location, str):
            raise TorchFileError(f"a storage key {key!r:.40} or location {location!r:.40} is not a string")
        if self._legacy and pid[5] is not None:
            raise TorchFileError(f"storage {key!r} is a view of another storage (legacy views are not supported)")
        numel = _int(numel, "storage length")
        if numel < 0:
            raise TorchFileError(f"storage {key!r} has a negative length")
        dtype = np.dtype(STORAGE_DTYPES[type_name]).newbyteorder(">" if self._big_endian else "<")
        storage = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if storage.dtype != dtype or storage.numel != numel:
            raise TorchFileError(
                f"storage {key!r} is declared as {storage.numel} x {storage.dtype} and as {numel} x {dtype}"
            )
        return storage


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy headers and key list: plain data only."""

    def find_class(self, module, name):
        raise TorchFileError(f"a header names {module}.{name}; headers hold plain data only")

    def persistent_load(self, pid):
        raise TorchFileError("a header holds a persistent id")


def _read_zip(f) -> dict[str, Any]:
    with zipfile.ZipFile(f) as z:
        records = {info.filename: info for info in z.infolist()}
        pickles = [n for n in records if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchFileError(f"it has {len(pickles)} data.pkl records, not 1")
        root = pickles[0][: -len("data.pkl")]
        order = records.get(f"{root}byteorder")
        byteorder = z.read(order).decode("ascii", "replace").strip() if order else "little"
        if byteorder not in ("little", "big"):
            raise TorchFileError(f"its byteorder record says {byteorder!r:.20}")
        unpickler = _StateDictUnpickler(io.BytesIO(z.read(pickles[0])), big_endian=byteorder == "big", legacy=False)
        state = unpickler.load()
        for storage in unpickler.storages.values():
            info = records.get(f"{root}data/{storage.key}")
            if info is None:
                raise TorchFileError(f"storage {storage.key!r} has no record {root}data/{storage.key}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise TorchFileError(f"storage {storage.key!r} is compressed (PyTorch stores storages uncompressed)")
            expected = storage.numel * storage.dtype.itemsize
            if info.file_size != expected:
                raise TorchFileError(
                    f"storage {storage.key!r} holds {info.file_size} bytes, not the {expected} its header declares"
                )
            storage.array = np.frombuffer(z.read(info), storage.dtype, count=storage.numel)
    return _materialize(state)


def _read_legacy(f) -> dict[str, Any]:
    if _PlainUnpickler(f).load() != MAGIC:
        raise TorchFileError("it is neither a zip file nor starts with PyTorch's legacy magic number")
    protocol, info = _PlainUnpickler(f).load(), _PlainUnpickler(f).load()
    if protocol != PROTOCOL:
        raise TorchFileError(f"its legacy protocol is {protocol!r:.20}, not {PROTOCOL}")
    if not isinstance(info, dict) or not isinstance(info.get("little_endian", True), bool):
        raise TorchFileError("its system info is not a dict with a boolean little_endian")
    unpickler = _StateDictUnpickler(f, big_endian=not info.get("little_endian", True), legacy=True)
    state = unpickler.load()
    keys = _PlainUnpickler(f).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(unpickler.storages):
        raise TorchFileError("its storage key list does not match the storages its object uses")
    for key in keys:
        storage = unpickler.storages[key]
        count = np.frombuffer(f.read(8), "<i8" if not unpickler._big_endian else ">i8")
        if count.size != 1 or int(count[0]) != storage.numel:
            raise TorchFileError(f"storage {key!r}'s length in the stream is not the {storage.numel} declared")
        expected = storage.numel * storage.dtype.itemsize
        data = f.read(expected)
        if len(data) != expected:
            raise TorchFileError(f"storage {key!r} ends after {len(data)} of its {expected} bytes")
        storage.array = np.frombuffer(data, storage.dtype, count=storage.numel)
    return _materialize(state)


def _materialize(state) -> dict[str, Any]:
    """Checked views -> owned native-endian arrays; identical views (tied weights) share one array."""
    if not isinstance(state, dict):
        raise TorchFileError(f"its object is a {type(state).__name__}, not a dict")
    built: dict[tuple, np.ndarray] = {}
    budget = [2 * sum(s.numel for s in {id(t.storage): t.storage for t in _tensors(state)}.values())]

    def build(value):
        if isinstance(value, _Tensor):
            view_key = (id(value.storage), value.offset, value.size, value.stride)
            if view_key not in built:
                numel = int(np.prod(value.size, dtype=object)) if value.size else 1
                budget[0] -= numel
                if budget[0] < 0:
                    raise TorchFileError("its tensors overlap to more than twice the elements its storages hold")
                array = value.storage.array
                itemsize = array.dtype.itemsize
                view = np.lib.stride_tricks.as_strided(
                    array[value.offset :] if numel else array[:0],
                    shape=value.size,
                    strides=tuple(s * itemsize for s in value.stride),
                    writeable=False,
                )
                built[view_key] = np.array(view, dtype=array.dtype.newbyteorder("="))
            return built[view_key]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TorchFileError("a dict in it has keys that are not strings")
            return {k: build(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TorchFileError(f"it holds a {type(value).__name__}, which a state dict does not")

    return build(state)


def _tensors(value):
    if isinstance(value, _Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
