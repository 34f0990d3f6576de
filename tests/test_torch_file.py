"""pdist.interop.torch_file against PyTorch files, honest and crafted: every pickle restricted, every tensor
checked against its storage, anything else refused in one sentence (nothing runs, nothing crashes)."""

import numpy as np
import pytest
import torch_files as tf

from pdist.interop import pytorch_fid as convert
from pdist.interop import torch_file
from pdist.interop.torch_file import TorchFileError

WRITERS = {"zip": tf.write_zip, "legacy": tf.write_legacy}


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "fc.bias": rng.normal(size=(5,)).astype(np.float32),
    }


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reads_what_torch_save_writes_including_views_and_tied_weights(tmp_path, fmt):
    arrays = _arrays()
    obj, storages = tf.state_dict(arrays)
    # a transposed view of the first storage, a slice at an offset, and the same view twice (tied weights)
    base = storages[2]
    items = obj.items + (
        ("fc.weight_t", tf.tensor(storages[0], (12, 4), stride=(1, 12))),
        ("fc.bias_tail", tf.tensor(base, (2,), offset=3)),
        ("head.weight", tf.tensor(storages[0], (4, 3, 2, 2))),
    )
    WRITERS[fmt](tmp_path / "m.pth", tf.OrderedDict(items), storages)
    state = torch_file.read_state_dict(str(tmp_path / "m.pth"))
    assert list(state) == [*arrays, "fc.weight_t", "fc.bias_tail", "head.weight"]
    for name, a in arrays.items():
        np.testing.assert_array_equal(state[name], a)
        assert state[name].dtype == a.dtype
    np.testing.assert_array_equal(state["fc.weight_t"], arrays["conv.weight"].reshape(4, 12).T)
    np.testing.assert_array_equal(state["fc.bias_tail"], arrays["fc.bias"][3:5])
    assert state["head.weight"] is state["conv.weight"]
    assert state["conv.weight"].flags.owndata or state["conv.weight"].base is not None


def _evil(marker):
    return tf.Call(tf.Global("os", "system"), (f"touch {marker}",))


@pytest.mark.parametrize(
    "where", ["legacy magic", "legacy sys info", "legacy object", "legacy keys", "zip object", "zip nested"]
)
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "ran"
    arrays = _arrays()
    obj, storages = tf.state_dict(arrays)
    path = tmp_path / "evil.pth"
    if where == "legacy magic":
        headers = tf.dumps(_evil(marker)) + tf.dumps(tf.PROTOCOL) + tf.dumps({"little_endian": True})
        tf.write_legacy(path, obj, storages, headers=headers)
    elif where == "legacy sys info":
        headers = tf.dumps(tf.MAGIC) + tf.dumps(tf.PROTOCOL) + tf.dumps({"little_endian": _evil(marker)})
        tf.write_legacy(path, obj, storages, headers=headers)
    elif where == "legacy object":
        tf.write_legacy(path, tf.OrderedDict(obj.items + (("x", _evil(marker)),)), storages)
    elif where == "legacy keys":
        tf.write_legacy(path, obj, storages, keys=tf.dumps([_evil(marker)]))
    elif where == "zip object":
        tf.write_zip(path, tf.OrderedDict(obj.items + (("x", _evil(marker)),)), storages)
    else:  # a builtin reached through an allowed name's module
        tf.write_zip(path, {"a": tf.Call(tf.Global("builtins", "eval"), ("1",))}, storages)
    with pytest.raises(TorchFileError, match="evil.pth") as e:
        torch_file.read_state_dict(str(path))
    assert not marker.exists()
    assert "\n" not in str(e.value)


def _one_tensor(size, stride, offset=0, numel=4, dtype=np.float32):
    storage = tf.Storage("0", np.arange(numel, dtype=dtype))
    return {"w": tf.tensor(storage, size, stride, offset)}, [storage]


def _every_slice(numel=4):
    """Every contiguous slice of one storage: 20 elements of views over 4."""
    storage = tf.Storage("0", np.arange(numel, dtype=np.float32))
    slices = [(n, o) for n in range(1, numel + 1) for o in range(numel - n + 1)]
    return {f"w{n}_{o}": tf.tensor(storage, (n,), offset=o) for n, o in slices}, [storage]


CRAFTED = {
    # the segfault of the old reader: 10**7 elements over a 4-element storage
    "overrun": (_one_tensor((10**7,), (1,)), "reaches element 9999999"),
    "offset past the end": (_one_tensor((2,), (1,), offset=3), "reaches element 4"),
    "stride past the end": (_one_tensor((2, 2), (3, 1)), "reaches element 4"),
    "negative stride": (_one_tensor((2,), (-1,), offset=3), "negative"),
    "negative offset": (_one_tensor((2,), (1,), offset=-1), "negative"),
    "stride-0 blow-up": (_one_tensor((10**6, 10**6), (0, 0)), "views storage"),
    "size not ints": (_one_tensor((2.0,), (1,)), "not an integer"),
    "many overlapping copies": (_every_slice(), "more than twice"),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_tensor_outside_its_storage_is_refused(tmp_path, fmt, case):
    (obj, storages), message = CRAFTED[case]
    WRITERS[fmt](tmp_path / "t.pth", obj, storages)
    with pytest.raises(TorchFileError, match=message):
        torch_file.read_state_dict(str(tmp_path / "t.pth"))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_storages_that_lie_are_refused(tmp_path, fmt):
    write = WRITERS[fmt]
    a = tf.Storage("0", np.arange(4, dtype=np.float32))
    # one key declared as two dtypes
    as_long = tf.Storage("0", np.arange(4, dtype=np.float32), type_name="LongStorage")
    write(tmp_path / "a.pth", {"x": tf.tensor(a, (4,)), "y": tf.tensor(as_long, (4,))}, [a])
    with pytest.raises(TorchFileError, match="declared as 4 x float32 and as 4 x int64"):
        torch_file.read_state_dict(str(tmp_path / "a.pth"))
    # a storage type no state dict reader should guess at
    q = tf.Storage("0", np.arange(4, dtype=np.float32), type_name="QInt8Storage")
    write(tmp_path / "b.pth", {"x": tf.tensor(q, (4,))}, [q])
    with pytest.raises(TorchFileError, match="QInt8Storage"):
        torch_file.read_state_dict(str(tmp_path / "b.pth"))
    # a storage that declares more elements than its bytes hold
    long = tf.Storage("0", np.arange(4, dtype=np.float32), numel=10**9)
    write(tmp_path / "c.pth", {"x": tf.tensor(long, (4,))}, [long])
    with pytest.raises(TorchFileError, match="not the 4000000000|ends after 16|length in the stream"):
        torch_file.read_state_dict(str(tmp_path / "c.pth"))


def test_a_missing_storage_is_refused(tmp_path):
    a, b = tf.Storage("0", np.zeros(4, np.float32)), tf.Storage("1", np.zeros(4, np.float32))
    obj = {"x": tf.tensor(a, (4,)), "y": tf.tensor(b, (4,))}
    tf.write_zip(tmp_path / "z.pth", obj, [a, b], records={"1": None})
    with pytest.raises(TorchFileError, match="storage '1' has no record archive/data/1"):
        torch_file.read_state_dict(str(tmp_path / "z.pth"))
    tf.write_legacy(tmp_path / "l.pth", obj, [a], keys=tf.dumps(["0"]))
    with pytest.raises(TorchFileError, match="key list does not match"):
        torch_file.read_state_dict(str(tmp_path / "l.pth"))
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02K\x01.")
    with pytest.raises(TorchFileError, match="legacy magic number"):
        torch_file.read_state_dict(str(tmp_path / "junk.pth"))


def test_the_converter_refuses_a_crafted_file_with_status_2_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    obj, storages = tf.state_dict(_arrays())
    headers = tf.dumps(_evil(marker)) + tf.dumps(tf.PROTOCOL) + tf.dumps({"little_endian": True})
    tf.write_legacy(tmp_path / "evil.pth", obj, storages, headers=headers)
    (tmp_path / "out.npz").write_bytes(b"kept")
    assert convert.main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "os.system" in err
    assert (tmp_path / "out.npz").read_bytes() == b"kept"
    assert not marker.exists()
