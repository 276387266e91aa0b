"""Reading pickled files from the internet without running code from them.

`pickle` runs whatever a file tells it to: a file can name any importable callable (`os.system`,
`subprocess.Popen`, `builtins.eval`) and have it called with its own arguments while it loads.
The Ava-256 release ships two pickled formats: `.pkl` files (plain pickles, e.g. the expression
codes `decoder/expression_codes/aeparams_1440000.pkl`) and `.pt` files (torch's zip format, e.g.
`encoder/encodings_gt.pt` and the released decoder). Both are read here without that risk:

- `safe_unpickle` / `load_pickle`: a restricted unpickler that builds only dicts (and
  `collections.OrderedDict`), lists, tuples, sets, numbers, strings, bytes, None/True/False and
  numpy arrays and scalars of plain numeric, boolean or string dtypes. Every callable a pickle can
  reach comes through `find_class`; here it hands out only a few checking wrappers (numpy's array
  and scalar rebuilders, `numpy.dtype`, and `_codecs.encode` for bytes in protocol 2 pickles),
  never the real `numpy.ndarray` (which could be called with a buffer) and never an object dtype
  (whose arrays hold raw pointers). BUILD (`__setstate__`) is allowed only on the arrays and dtypes
  those wrappers made, with a state of the form numpy writes. Anything else is refused with
  `RefusedPickle`, which names what the file asked for.
- `load_torch`: `torch.load(weights_only=True)` (torch's own restricted unpickler: tensors,
  containers, numbers, strings), with one clear error instead of torch's advice to load the file
  with `weights_only=False`, which would run code from it.
- `describe`: a short description of a loaded value ("dict of 12 str -> ndarray float32 [256]"),
  for errors that must say what a file held when it has the wrong structure.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from ava.errors import UserError

ADMITTED = "dicts, lists, tuples, numbers, strings and numpy arrays"


class RefusedPickle(UserError):
    """A pickle asked for something the restricted unpickler does not build; `found` names it
    (e.g. 'posix.system' or 'an object-dtype array')."""

    def __init__(self, source: str, found: str) -> None:
        super().__init__(f"{source}: refused to unpickle: it asks for {found}, which could run code or read "
                         f"memory; only {ADMITTED} are loaded")
        self.source = source
        self.found = found


class _Refusal(Exception):
    """Raised inside the unpickler; turned into RefusedPickle with the file's name."""


# numpy's type codes that hold no Python objects: booleans, integers, floats, complex numbers, byte
# and unicode strings (with an optional byte order and size). Object ('O'), void/structured ('V'),
# datetime ('M', 'm') and anything spelled otherwise are refused.
_PLAIN_DTYPE = re.compile(r"^[<>|=]?(?:b1|\?|[iu][1248]|f[248]|c(?:8|16)|[SU]\d+)$")


def _plain_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufcSU" or dtype.names is not None \
            or dtype.subdtype is not None:
        raise _Refusal(f"an array or scalar of dtype {dtype!r}")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(size) is int and size >= 0 for size in shape):
        raise _Refusal(f"an array of shape {shape!r}")
    return shape


def _raw_bytes(data: Any) -> bytes:
    if isinstance(data, str):  # Python 2 pickles carry raw bytes as str; latin-1 maps them 1:1
        return data.encode("latin-1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise _Refusal(f"array data of type {type(data).__name__}")


class _ArrayClass:
    """Stands for `numpy.ndarray` inside a pickle: acceptable only as the class argument of numpy's
    `_reconstruct`; calling it (or NEWOBJ on it) is refused, since ndarray(shape, dtype, buffer)
    could build arrays over arbitrary memory."""

    def __new__(cls, *args, **kwargs):
        raise _Refusal("numpy.ndarray called directly")


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str) or not _PLAIN_DTYPE.match(spec) or not isinstance(align, bool) \
            or not isinstance(copy, bool):
        raise _Refusal(f"numpy.dtype({spec!r})")
    # Always a copy: numpy's built-in dtypes are shared singletons, and the BUILD that follows sets
    # the byte order on the object it gets (on a shared one, for the whole process).
    return _plain_dtype(np.dtype(spec, False, True))


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _ArrayClass:
        raise _Refusal(f"numpy's _reconstruct of {subtype!r}")
    _shape(shape)
    if typecode not in (b"b", "b"):
        raise _Refusal(f"numpy's _reconstruct with type code {typecode!r}")
    return np.ndarray.__new__(np.ndarray, (0,), np.int8)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _plain_dtype(dtype)
    raw = _raw_bytes(data)
    if len(raw) != dtype.itemsize:
        raise _Refusal(f"a numpy scalar of {len(raw)} bytes for dtype {dtype}")
    return np.frombuffer(raw, dtype=dtype)[0].copy()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype, shape = _plain_dtype(dtype), _shape(shape)
    if order not in ("C", "F"):
        raise _Refusal(f"an array in order {order!r}")
    raw = _raw_bytes(buffer)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _Refusal(f"an array of shape {shape} and dtype {dtype} over {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refusal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _ordered_dict(*args: Any) -> dict:
    if args:
        raise _Refusal("collections.OrderedDict with arguments")
    return {}


# (module, name) -> what the pickle gets. numpy 2 renamed numpy.core to numpy._core; pickles of
# either name load in either version.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = _ArrayClass
_ALLOWED[("numpy", "dtype")] = _dtype
_ALLOWED[("_codecs", "encode")] = _codecs_encode
_ALLOWED[("collections", "OrderedDict")] = _ordered_dict


def _check_array_state(inst: np.ndarray, state: Any) -> tuple:
    """The state numpy's ndarray.__reduce__ writes: (1, shape, dtype, is_fortran, raw bytes)."""
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise _Refusal(f"an array state of the form {type(state).__name__}")
    _, shape, dtype, fortran, data = state
    shape, dtype = _shape(shape), _plain_dtype(dtype)
    if not isinstance(fortran, bool):
        raise _Refusal("an array state whose order flag is not a bool")
    raw = _raw_bytes(data)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _Refusal(f"an array of shape {shape} and dtype {dtype} over {len(raw)} bytes")
    return (1, shape, dtype, fortran, raw)


def _check_dtype_state(inst: np.dtype, state: Any) -> tuple:
    """The state numpy's dtype.__reduce__ writes for a plain dtype: (3 or 4, byte order, None,
    None, None, element size or -1, alignment or -1, flags), flags and sizes those of `inst`."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise _Refusal(f"a dtype state {state!r}")
    order, subarray, names, fields, size, alignment, flags = state[1:8]
    if order not in ("<", ">", "|", "=") or subarray is not None or names is not None or fields is not None \
            or size not in (-1, inst.itemsize) or alignment not in (-1, inst.alignment) or flags != inst.flags \
            or (len(state) == 9 and state[8] is not None):
        raise _Refusal(f"a dtype state {state!r}")
    return state


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation, whose BUILD can be intercepted
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refusal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refusal(f"a persistent object {str(pid)[:60]!r}")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            inst.__setstate__(_check_array_state(inst, state))
        elif isinstance(inst, np.dtype):
            inst.__setstate__(_check_dtype_state(inst, state))
            _plain_dtype(inst)
        else:
            raise _Refusal(f"setting the state of a {type(inst).__name__}")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def _check_result(value: Any, depth: int = 0) -> None:
    """Defence in depth: the loaded value holds only admitted types (and no object arrays)."""
    if depth > 200:
        raise _Refusal("data nested more than 200 levels deep")
    if isinstance(value, np.ndarray):
        _plain_dtype(value.dtype)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_result(key, depth + 1)
            _check_result(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _check_result(item, depth + 1)
    elif isinstance(value, np.generic):
        _plain_dtype(value.dtype)
    elif value is not None and not isinstance(value, (bool, int, float, complex, str, bytes, bytearray)):
        raise _Refusal(f"an object of type {type(value).__module__}.{type(value).__name__}")


def safe_unpickle(data: bytes, *, source: str = "the pickle") -> Any:
    """The value pickled in `data`, built only from dicts, lists, tuples, sets, numbers, strings,
    bytes and numpy arrays/scalars of plain dtypes (any pickle protocol, Python 2 ones included).

    Raises RefusedPickle (a UserError) naming the first thing the pickle asked for that is not
    admitted, before anything it names is called; UserError for data that is not a whole pickle.
    `source` names the file in messages.
    """
    try:
        value = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        _check_result(value)
        return value
    except _Refusal as refusal:
        raise RefusedPickle(source, str(refusal)) from None
    except RecursionError:
        raise RefusedPickle(source, "data nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, UnicodeDecodeError) as error:
        raise UserError(f"{source} is not a readable pickle ({type(error).__name__}: {error}); "
                        "download it again") from None


def load_pickle(path: str | Path) -> Any:
    """`safe_unpickle` of a file; a missing file is a UserError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    return safe_unpickle(data, source=str(path))


def load_torch(path: str | Path) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`: tensors, containers, numbers and
    strings, nothing that runs code. A file torch cannot read that way is one UserError saying what
    it held (torch's own message would suggest `weights_only=False`, which runs code from the file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file it will not load
        message = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if found:
            raise UserError(f"{path}: refused to load: it asks for {found.group(1)}, which is not a tensor, "
                            "container, number or string (loading it could run code)") from None
        raise UserError(f"{path} is not a file torch.load can read ({type(error).__name__}: "
                        f"{message.splitlines()[0][:200] if message else 'no message'}); download it again") from None


def describe(value: Any, depth: int = 0) -> str:
    """A short description of a loaded value's structure, e.g. 'dict of 5000 int -> ndarray float32
    [256]', 'Tensor float32 [4096, 256]', 'list of 3 str'."""
    if depth > 3:
        return "..."
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {list(value.shape)}"
    if type(value).__name__ == "Tensor":
        return f"Tensor {str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    if isinstance(value, dict):
        if not value:
            return "empty dict"
        key, item = next(iter(value.items()))
        return f"dict of {len(value)} {type(key).__name__} -> {describe(item, depth + 1)}"
    if isinstance(value, (list, tuple)):
        if not value:
            return f"empty {type(value).__name__}"
        return f"{type(value).__name__} of {len(value)} {describe(value[0], depth + 1)}"
    return type(value).__name__
