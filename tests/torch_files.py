"""PyTorch-format files written opcode by opcode from the formats' documented layouts (no PyTorch here).

Protocol-2 pickles assembled by hand, so a test can write what ``torch.save`` writes and also what it never
would: globals that run code, tensors that overrun their storage, storages that lie about their length.
Zip format (PyTorch >= 1.6): ``archive/data.pkl`` and the raw bytes at ``archive/data/<key>``. Legacy format:
pickles of the magic number, the protocol version, system info, the object and the storage keys, then per key
its element count (int64) and bytes.
"""

from __future__ import annotations

import dataclasses
import struct
import zipfile

import numpy as np

MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


@dataclasses.dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    fn: object
    args: tuple


@dataclasses.dataclass(frozen=True)
class Storage:
    """A persistent id; ``type_name`` and ``numel`` may lie about ``array``."""

    key: str
    array: np.ndarray
    type_name: str | None = None
    numel: int | None = None

    def pid(self, legacy: bool):
        type_name = self.type_name or STORAGE_TYPES[self.array.dtype]
        numel = self.array.size if self.numel is None else self.numel
        pid = ("storage", Global("torch", type_name), self.key, "cpu", numel)
        return (*pid, None) if legacy else pid


@dataclasses.dataclass(frozen=True)
class OrderedDict:
    items: tuple


def tensor(storage: Storage, size, stride=None, offset=0) -> Call:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``."""
    size = tuple(size)
    if stride is None:
        stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    hooks = Call(Global("collections", "OrderedDict"), ())
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, tuple(stride), False, hooks))


def dumps(value, legacy: bool = False) -> bytes:
    return b"\x80\x02" + _ops(value, legacy) + b"."


def _ops(v, legacy) -> bytes:
    if v is None:
        return b"N"
    if isinstance(v, bool):
        return b"\x88" if v else b"\x89"
    if isinstance(v, int):
        data = v.to_bytes((v.bit_length() + 8) // 8 or 1, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data
    if isinstance(v, float):
        return b"G" + struct.pack(">d", v)
    if isinstance(v, str):
        data = v.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(v, tuple):
        return b"(" + b"".join(_ops(x, legacy) for x in v) + b"t"
    if isinstance(v, list):
        return b"](" + b"".join(_ops(x, legacy) for x in v) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(_ops(k, legacy) + _ops(x, legacy) for k, x in v.items()) + b"u"
    if isinstance(v, OrderedDict):
        head = _ops(Call(Global("collections", "OrderedDict"), ()), legacy)
        return head + b"(" + b"".join(_ops(k, legacy) + _ops(x, legacy) for k, x in v.items) + b"u"
    if isinstance(v, Global):
        return b"c" + v.module.encode() + b"\n" + v.name.encode() + b"\n"
    if isinstance(v, Call):
        return _ops(v.fn, legacy) + _ops(tuple(v.args), legacy) + b"R"
    if isinstance(v, Storage):
        return _ops(v.pid(legacy), legacy) + b"Q"
    raise TypeError(v)


def state_dict(arrays: dict[str, np.ndarray]) -> tuple[OrderedDict, list[Storage]]:
    """What ``torch.save(module.state_dict())`` pickles: one contiguous storage per tensor."""
    storages = [Storage(str(i), np.ascontiguousarray(a).reshape(-1)) for i, a in enumerate(arrays.values())]
    items = tuple((name, tensor(s, a.shape)) for (name, a), s in zip(arrays.items(), storages, strict=True))
    return OrderedDict(items), storages


def write_zip(path, obj, storages, *, records=None) -> None:
    """``records`` overrides the bytes written per storage key (None leaves the record out)."""
    records = records or {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", dumps(obj))
        z.writestr("archive/byteorder", "little")
        for s in storages:
            data = records.get(s.key, s.array.tobytes())
            if data is not None:
                z.writestr(f"archive/data/{s.key}", data)


def write_legacy(path, obj, storages, *, headers=None, keys=None) -> None:
    """``headers`` replaces the three header pickles' bytes, ``keys`` the storage-key list's."""
    with open(path, "wb") as f:
        f.write(
            headers if headers is not None else b"".join(dumps(h) for h in (MAGIC, PROTOCOL, {"little_endian": True}))
        )
        f.write(dumps(obj, legacy=True))
        f.write(keys if keys is not None else dumps([s.key for s in storages]))
        for s in storages:
            f.write(np.int64(s.array.size).tobytes() + s.array.tobytes())
