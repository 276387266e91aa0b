"""The restricted unpickler and the weights-only torch reader (ava.data.safe_load): files from the
internet load their data and never run code."""

from __future__ import annotations

import os
import pickle
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ava.data.safe_load import RefusedPickle, describe, load_pickle, load_torch, safe_unpickle
from ava.errors import UserError


class RunsACommand:
    """What a hostile pickle looks like: loading it calls os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "aeparams_1440000.pkl"
    path.write_bytes(pickle.dumps({"000123": RunsACommand(marker)}))
    # The same bytes do run the command under plain pickle: the test's pickle is a real threat.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(RefusedPickle, match=r"aeparams_1440000.pkl: refused to unpickle: it asks for (posix|nt)\.system"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_is_refused_before_the_call(tmp_path, protocol):
    marker = tmp_path / "ran"
    for hostile in (RunsACommand(marker), CallsEval(), subprocess.Popen.__init__):
        try:
            data = pickle.dumps([1, hostile], protocol=protocol)
        except (pickle.PicklingError, TypeError, AttributeError):
            continue  # Popen.__init__ does not pickle in every protocol
        with pytest.raises(RefusedPickle):
            safe_unpickle(data)
    assert not marker.exists()


def _hand_made(*opcodes: bytes) -> bytes:
    return b"\x80\x02" + b"".join(opcodes) + b"."


@pytest.mark.parametrize("data, found", [
    # numpy.ndarray called directly with a buffer could make an array over any memory.
    (_hand_made(b"cnumpy\nndarray\n", b"(K\x01\x85U\x01O", b"C\x08AAAAAAAA", b"tR"), "numpy.ndarray called directly"),
    # ... and so could NEWOBJ on it.
    (_hand_made(b"cnumpy\nndarray\n", b")\x81"), "numpy.ndarray called directly"),
    # Object dtypes hold raw pointers; void dtypes can nest them.
    (_hand_made(b"cnumpy\ndtype\n", b"U\x02O8\x89\x88\x87R"), "numpy.dtype('O8')"),
    (_hand_made(b"cnumpy\ndtype\n", b"U\x03V16\x89\x88\x87R"), "numpy.dtype('V16')"),
    # BUILD is only for the arrays and dtypes the wrappers made.
    (_hand_made(b"}", b"}b"), "setting the state of a dict"),
    # A real numpy function beside the admitted ones.
    (_hand_made(b"cnumpy\nload\n", b"U\x01x\x85R"), "numpy.load"),
    (_hand_made(b"cbuiltins\ngetattr\n"), "builtins.getattr"),
    (_hand_made(b"c_codecs\nencode\n", b"X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R"), "_codecs.encode"),
    # A dtype state that would change more than the byte order.
    (_hand_made(b"cnumpy\ndtype\n", b"U\x02f8\x89\x88\x87R", b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"),
     "a dtype state"),
])
def test_hand_made_abuse_of_the_admitted_names_is_refused(data, found):
    with pytest.raises(RefusedPickle) as refusal:
        safe_unpickle(data)
    assert found in refusal.value.found


def test_object_arrays_and_foreign_objects_are_refused():
    with pytest.raises(RefusedPickle, match=r"numpy.dtype\(.O8.\)"):
        safe_unpickle(pickle.dumps(np.array([1, "a", None], dtype=object)))
    with pytest.raises(RefusedPickle, match="torch"):
        safe_unpickle(pickle.dumps({"code": torch.zeros(3)}))


def test_the_shared_float64_dtype_is_left_alone():
    # A pickle that sets the byte order of a dtype must not change numpy's own float64.
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(np.arange(3, dtype=">f8"), protocol=protocol)
        value = safe_unpickle(data)
        assert value.dtype == pickle.loads(data).dtype and np.array_equal(value, [0, 1, 2])
        assert np.dtype("f8").byteorder == "=" and np.dtype("f8").isnative


codes = st.dictionaries(
    st.one_of(st.integers(0, 10**6), st.text(max_size=8)),
    st.one_of(
        hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, ">f4", "<U4"]),
                   hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
        st.lists(st.floats(allow_nan=False), max_size=4),
        st.tuples(st.integers(), st.text(max_size=4), st.none(), st.booleans()),
    ),
    max_size=5,
)


def _same(first, second) -> bool:
    if isinstance(first, np.ndarray):  # bytes, not values: NaN must equal NaN
        return isinstance(second, np.ndarray) and first.dtype == second.dtype and first.shape == second.shape \
            and first.tobytes() == second.tobytes()
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)):
        return type(first) is type(second) and len(first) == len(second) and all(map(_same, first, second))
    return first == second and type(first) is type(second)


@settings(max_examples=60, deadline=None)
@given(codes, st.integers(0, pickle.HIGHEST_PROTOCOL))
@example({0: np.array(np.nan, np.float32)}, 0)
def test_data_loads_as_plain_pickle_loads_it(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert _same(safe_unpickle(data), pickle.loads(data))


def test_numpy_scalars_ordered_dicts_and_fortran_arrays():
    value = OrderedDict([(np.int64(7), np.float32(1.5)), ("f", np.asfortranarray(np.arange(6.0).reshape(2, 3)))])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = safe_unpickle(pickle.dumps(value, protocol=protocol))
        assert loaded[7] == np.float32(1.5) and type(loaded[7]) is np.float32
        assert np.array_equal(loaded["f"], value["f"])


def test_damaged_pickles_are_one_clear_error(tmp_path):
    data = pickle.dumps({"a": np.arange(10)})
    with pytest.raises(UserError, match="is not a readable pickle"):
        safe_unpickle(data[: len(data) // 2], source="x.pkl")
    with pytest.raises(UserError, match="does not exist"):
        load_pickle(tmp_path / "absent.pkl")


def test_torch_files_load_weights_only(tmp_path):
    good = tmp_path / "encodings_gt.pt"
    torch.save({"codes": torch.arange(6.0).view(2, 3), "names": ["a", "b"]}, good)
    assert torch.equal(load_torch(good)["codes"], torch.arange(6.0).view(2, 3))
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"codes": RunsACommand(marker)}, hostile)
    with pytest.raises(UserError, match=r"hostile.pt: refused to load: it asks for (posix|nt)\.system"):
        load_torch(hostile)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a file torch.load can read"):
        load_torch(tmp_path / "junk.pt")


def test_describe_names_the_structure():
    assert describe({5: np.zeros(256, np.float32)}) == "dict of 1 int -> ndarray float32 [256]"
    assert describe(torch.zeros(4, 256)) == "Tensor float32 [4, 256]"
    assert describe(["a", "b"]) == "list of 2 str"
    assert describe({}) == "empty dict"
