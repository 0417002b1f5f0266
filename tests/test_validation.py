"""Bad and unusual input to every public kernel: one table of input classes.

The jitted loops do no bounds checks, so every kernel must refuse, before any
compiled code runs, anything that is not what it documents, and must handle
every valid but unusual input (views, read-only or misaligned memory, lists)
exactly as its contiguous copy.

Two tables drive the tests:

* :data:`SPECS`: each kernel's arguments and their shapes in named sizes;
* the input classes: :func:`_bad_cases` (one row per class of bad input:
  not an array, 0-d, wrong ndim, ragged list, each wrong dtype, masked,
  mixed precision, NaN/inf, mismatched and empty shapes, sizes that overflow
  the 32-bit BLAS sizes, bad labels, a bad ``check_finite``), each applied to
  every argument it concerns; and :data:`LAYOUTS` / :data:`LABEL_LAYOUTS`
  (one row per class of valid but unusual input).

A bad input must raise the documented exception class (``TypeError`` for a
wrong kind of value, ``ValueError`` for a wrong value) with a message that
names the offending argument, without allocating memory (the tests trace
NumPy's allocations). A valid unusual input must give bit for bit the result
of its C-contiguous copy, which in turn matches the NumPy reference, and must
not make Numba compile another specialisation.
"""

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import fusedgrad.kernels
from fusedgrad import _validate
from cases import CASES, as_float64, compare, outputs

TESTS = Path(__file__).resolve().parent

# np.matrix input is one of the unusual layouts
pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

#: Sizes of the valid inputs; all different, so a check that confuses two
#: sizes cannot pass by accident.
SIZES = dict(N=7, d=3, h=4, K=5)

#: A size that does not fit the 32-bit sizes the BLAS calls take.
HUGE = 2**31

#: Most bytes a rejected call may allocate (the messages, small temporaries).
REJECT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Spec:
    """A kernel's positional arguments: float arrays by their shapes, and labels."""

    function: str
    args: tuple  # positional argument names, in order
    floats: dict  # name -> shape in size names
    labels: str = None  # name of the integer-label argument, if any
    optional: tuple = ()  # arguments that may be None
    extra: dict = field(default_factory=dict)  # other keyword arguments of a valid call
    case: str = None  # the row of tests/cases.py with the reference

    @property
    def kernel(self):
        return getattr(fusedgrad.kernels, self.function)

    def holders(self, size):
        """Arguments whose shape uses ``size``."""
        out = [n for n in self.args if n in self.floats and size in self.floats[n]]
        if self.labels and size == "N":
            out.append(self.labels)
        return out


SPECS = {
    s.function: s
    for s in [
        Spec("mlp_loss_grad", ("X", "y", "W1", "b1", "W2", "b2"),
             {"X": ("N", "d"), "W1": ("d", "h"), "b1": ("h",), "W2": ("h", "K"), "b2": ("K",)},
             labels="y", case="mlp_loss_grad"),
        Spec("softmax_cross_entropy", ("Z", "y"), {"Z": ("N", "K")}, labels="y",
             case="softmax_cross_entropy"),
        Spec("affine_sigmoid", ("X", "W", "b"), {"X": ("N", "d"), "W": ("d", "h"), "b": ("h",)},
             case="affine_sigmoid"),
        Spec("affine_sigmoid_backward", ("X", "A", "dA", "W"),
             {"X": ("N", "d"), "A": ("N", "h"), "dA": ("N", "h"), "W": ("d", "h")},
             optional=("W",), case="affine_sigmoid_backward"),
        Spec("ols_loss_grad", ("X", "y", "w"), {"X": ("N", "d"), "y": ("N",), "w": ("d",)},
             case="ols_loss_grad"),
        Spec("gram", ("X", "y"), {"X": ("N", "d"), "y": ("N",)}, case="gram"),
        Spec("affine_activation", ("X", "W", "b"),
             {"X": ("N", "d"), "W": ("d", "h"), "b": ("h",)},
             extra={"activation": "tanh"}, case="affine_activation/tanh"),
        Spec("affine_activation_backward", ("X", "A", "dA", "W"),
             {"X": ("N", "d"), "A": ("N", "h"), "dA": ("N", "h"), "W": ("d", "h")},
             optional=("W",), extra={"activation": "tanh"},
             case="affine_activation_backward/tanh"),
    ]
}


#: Kernels whose parameters are lists of arrays, outside this module's positional
#: scheme; they go through the same checks (``_validate.float_arrays``, each
#: array named by its place: ``coefs[1]``), tested in their own files.
LIST_KERNELS = {"network_loss_grad": "tests/test_network.py"}


def test_specs_cover_every_kernel():
    assert set(SPECS) | set(LIST_KERNELS) == set(fusedgrad.kernels.__all__)
    assert not set(SPECS) & set(LIST_KERNELS)
    for spec in SPECS.values():
        params = list(inspect.signature(spec.kernel).parameters)
        assert params[: len(spec.args)] == list(spec.args), spec.function


def _shape(spec, name, sizes):
    return tuple(sizes[s] for s in spec.floats[name])


def valid_args(spec, dtype=np.float64, sizes=SIZES, seed=0):
    """A valid argument dict for ``spec``, of the given sizes."""
    rng = np.random.default_rng(seed)
    args = {}
    for name in spec.args:
        if name == spec.labels:
            args[name] = rng.integers(0, max(1, sizes["K"]), size=sizes["N"])
        elif name == "A":  # a sigmoid output
            args[name] = rng.uniform(0.05, 0.95, _shape(spec, name, sizes)).astype(dtype)
        else:
            args[name] = rng.standard_normal(_shape(spec, name, sizes)).astype(dtype)
    return args


def call(spec, args, **kwargs):
    return spec.kernel(*(args[n] for n in spec.args), **{**spec.extra, **kwargs})


def _names(*names):
    """A regex that matches any of ``names`` as a whole word."""
    return r"\b(" + "|".join(names) + r")\b"


# ---------------------------------------------------------------------------
# Bad input: the table of input classes
# ---------------------------------------------------------------------------

#: dtypes that are not float32/float64, as float arguments
BAD_FLOAT_DTYPES = (np.int64, np.int32, np.uint8, np.bool_, np.complex64, np.complex128,
                    np.float16, np.longdouble, object, "U3", "datetime64[s]")

#: dtypes that are not integers, as labels
BAD_LABEL_DTYPES = (np.float64, np.float32, np.bool_, np.complex128, object, "U3")


def _set(name, value):
    """Replace argument ``name`` by ``value``, or by ``value(current)`` when callable."""
    def mutate(a):
        a[name] = value(a[name]) if callable(value) else value
    return mutate


def _ragged(a):
    """A nested list like ``a.tolist()`` whose last row is one element short
    (for 1-D ``a``: whose last element is a pair)."""
    rows = a.tolist()
    rows[-1] = rows[-1][:-1] if a.ndim > 1 else [rows[-1], rows[-1]]
    return rows


def _huge_view(dtype, shape):
    """A read-only view of the given (huge) shape over one element: no memory."""
    return np.broadcast_to(np.ones((), dtype), shape)


def _bad_cases():
    """(spec, mutate(args) -> None, exception, regex of names, kwargs) per row."""
    cases = []

    def add(spec, case_id, mutate, exc, *names, marks=(), **kwargs):
        cases.append(pytest.param(spec, mutate, exc, _names(*names), kwargs,
                                  id=f"{spec.function}-{case_id}", marks=marks))

    for spec in SPECS.values():
        for name in spec.args:
            is_float = name in spec.floats

            # not an array at all
            add(spec, f"{name}=str", _set(name, "abc"), TypeError, name)
            if name not in spec.optional:
                add(spec, f"{name}=None", _set(name, None), TypeError, name)
            add(spec, f"{name}=object()", _set(name, object()), TypeError, name)
            add(spec, f"{name}=dict", _set(name, {}), TypeError, name)
            add(spec, f"{name}=generator", _set(name, lambda v: (x for x in v)),
                TypeError, name)

            # 0-d: a 0-d array, a NumPy scalar, a Python number
            add(spec, f"{name}-0d-array", _set(name, lambda v: np.asarray(v.flat[0])),
                ValueError, name)
            add(spec, f"{name}-numpy-scalar", _set(name, lambda v: v.flat[0]),
                ValueError, name)
            add(spec, f"{name}-python-scalar", _set(name, lambda v: v.flat[0].item()),
                ValueError, name)

            # wrong number of dimensions: one fewer, one more
            add(spec, f"{name}-fewer-dims", _set(name, lambda v: np.asarray(v[0])),
                ValueError, name)
            add(spec, f"{name}-more-dims", _set(name, lambda v: v[None]), ValueError, name)

            # a ragged nested list, a masked array
            add(spec, f"{name}-ragged-list", _set(name, _ragged),
                ValueError, name)
            add(spec, f"{name}-masked", _set(name, np.ma.masked_array),
                TypeError, name)

            if not is_float:
                continue

            # kinds that are not float32 / float64, as arrays and as lists
            for bad in BAD_FLOAT_DTYPES:
                add(spec, f"{name}-{np.dtype(bad).name}",
                    _set(name, lambda v, bad=bad: v.astype(bad)), TypeError, name)
            add(spec, f"{name}-int-list", _set(name, lambda v: v.astype(int).tolist()),
                TypeError, name)

            # the other precision than the rest
            if len(spec.floats) > 1:
                add(spec, f"{name}-float32-among-float64",
                    _set(name, lambda v: v.astype(np.float32)), TypeError, name)

                def mixed64(a, name=name, spec=spec):
                    for n in spec.floats:
                        a[n] = a[n].astype(np.float32 if n != name else np.float64)

                add(spec, f"{name}-float64-among-float32", mixed64, TypeError, name)

            # NaN and inf, also in a view that must be copied first
            for value in (np.nan, np.inf, -np.inf):
                def poison(a, name=name, value=value):
                    arr = a[name].copy()
                    arr.reshape(-1)[-1] = value
                    a[name] = arr

                add(spec, f"{name}-{value}", poison, ValueError, name)

            def poison_view(a, name=name):
                arr = np.asfortranarray(a[name])[::-1]
                arr = arr.copy(order="F")[::-1]
                arr[0] = np.nan
                a[name] = arr

            add(spec, f"{name}-nan-in-reversed-fortran-view", poison_view, ValueError, name)

            # one axis one longer than the arguments it must match
            for axis, size in enumerate(spec.floats[name]):
                others = [n for n in spec.holders(size) if n != name]
                if not others:
                    continue  # a size only this argument has: any value is valid

                def grow(a, name=name, axis=axis):
                    shape = list(a[name].shape)
                    shape[axis] += 1
                    a[name] = np.ones(shape, a[name].dtype)

                # float/float mismatches name both arguments; labels only name themselves
                expect = [name] if others != [spec.labels] else [spec.labels]
                add(spec, f"{name}-axis{axis}({size})+1-vs-{'/'.join(others)}", grow,
                    ValueError, *expect)

                # a huge (memory-free) view that mismatches the others
                def huge(a, name=name, axis=axis):
                    shape = list(a[name].shape)
                    shape[axis] = HUGE + 1
                    a[name] = _huge_view(a[name].dtype, tuple(shape))

                # (only the labels have the samples axis besides this argument:
                # the kernel must hand them to float_arrays so that they are
                # checked before the huge view is copied)
                add(spec, f"{name}-axis{axis}({size})-huge-mismatch", huge, ValueError,
                    name, *others)

        for size in SIZES:
            holders = spec.holders(size)
            if not holders:
                continue

            # empty: one size 0 in every argument that has it
            def empty(a, size=size, spec=spec):
                a.update(valid_args(spec, sizes={**SIZES, size: 0}))

            add(spec, f"empty-{size}=0", empty, ValueError, *holders)

            # a size of 2**31 in every float argument that has it: too large
            # for the BLAS calls unless it is the samples axis (no memory used)
            if size != "N":
                def huge_size(a, size=size, spec=spec):
                    sizes = {**SIZES, size: HUGE}
                    for n in spec.floats:
                        if size in spec.floats[n]:
                            a[n] = _huge_view(a[n].dtype, _shape(spec, n, sizes))

                add(spec, f"huge-{size}=2**31", huge_size, ValueError, *holders)

        # labels
        if spec.labels:
            y = spec.labels

            def label(value, y=y):
                def mutate(a):
                    labels = a[y].astype(np.uint64 if value >= 2**63 else np.int64)
                    labels[-1] = value
                    a[y] = labels
                return mutate

            add(spec, f"{y}=-1", label(-1), ValueError, y)
            add(spec, f"{y}=K", label(SIZES["K"]), ValueError, y)
            add(spec, f"{y}=2**64-1", label(2**64 - 1), ValueError, y)
            for bad in BAD_LABEL_DTYPES:
                add(spec, f"{y}-{np.dtype(bad).name}",
                    _set(y, lambda v, bad=bad: v.astype(bad)), TypeError, y)
            add(spec, f"{y}-float-list", _set(y, lambda v: v.astype(float).tolist()),
                TypeError, y)
            add(spec, f"{y}-2d", _set(y, lambda v: v[:, None]), ValueError, y)
            add(spec, f"{y}-too-short", _set(y, lambda v: v[:-1]), ValueError, y)
            add(spec, f"{y}-too-long", _set(y, lambda v: np.append(v, 0)),
                ValueError, y)

        # check_finite that is not a bool
        for value in ("no", None, 1, 0.0):
            add(spec, f"check_finite={value!r}", lambda a: None, TypeError, "check_finite",
                check_finite=value)
    return cases


def _kernel_allocations(fn):
    """Peak bytes NumPy and Python allocate while ``fn()`` runs, and its exception."""
    tracemalloc.start()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned for the caller to check
        error = exc
    else:
        error = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("spec, mutate, exc, names, kwargs", _bad_cases())
def test_bad_input_raises(spec, mutate, exc, names, kwargs):
    args = valid_args(spec)
    call(spec, args)  # the unmutated call is valid
    mutate(args)
    with pytest.raises(exc, match=names):
        call(spec, args, **kwargs)
    # and it is rejected without allocating memory (views of 2**31 rows included)
    peak, error = _kernel_allocations(lambda: call(spec, args, **kwargs))
    assert isinstance(error, exc)
    assert peak < REJECT_BYTES, f"{peak} bytes allocated before the error"


def test_bad_case_table_has_every_class():
    """Every kernel has a row of each class (the table is generated, check it is full)."""
    ids = [p.id for p in _bad_cases()]
    for spec in SPECS.values():
        mine = [i.split("-", 1)[1] for i in ids if i.startswith(spec.function + "-")]
        for needle in ("=str", "-0d-array", "-fewer-dims", "-ragged-list", "-masked", "-int64",
                       "-complex128", "-object", "-nan", "-inf", "empty-", "huge",
                       "check_finite="):
            assert any(needle in i for i in mine), (spec.function, needle)
        if spec.labels:
            for needle in ("y=-1", "y=K", "y-float64", "y-too-short", "y-2d"):
                assert any(needle in i for i in mine), (spec.function, needle)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_non_finite_in_large_input_found(name, dtype):
    """NaN at the very end and at the very start of an input of several chunks."""
    spec = SPECS[name]
    sizes = dict(SIZES, N=5003)
    first = spec.args[0]
    for index in (0, -1):
        args = valid_args(spec, dtype, sizes)
        args[first].reshape(-1)[index] = np.nan
        with pytest.raises(ValueError, match=_names(first)):
            call(spec, args)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_check_finite_is_keyword_only(name):
    param = inspect.signature(SPECS[name].kernel).parameters["check_finite"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY
    assert param.default is True


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_check_finite_false_skips_the_check(name, value):
    """check_finite=False: no error; a NaN flows into the result."""
    spec = SPECS[name]
    args = valid_args(spec)
    first = spec.args[0]
    args[first].reshape(-1)[0] = value
    with pytest.raises(ValueError):
        call(spec, args)
    result = call(spec, args, check_finite=False)
    outputs_ = result if isinstance(result, tuple) else (result,)
    assert all(o is None or np.ndim(o) == 0 or o.size for o in outputs_)
    if np.isnan(value):
        assert not all(np.all(np.isfinite(o)) for o in outputs_ if o is not None)


def test_backward_without_W_is_valid():
    spec = SPECS["affine_sigmoid_backward"]
    args = valid_args(spec)
    dW, db, dX = spec.kernel(args["X"], args["A"], args["dA"])
    assert dX is None
    assert dW.shape == (SIZES["d"], SIZES["h"]) and db.shape == (SIZES["h"],)


@pytest.mark.parametrize("labels", ["short", "2d", "float"])
def test_float_arrays_checks_labels_before_copying(labels):
    """float_arrays(labels=...) rejects bad labels before copying a huge view."""
    Z = _huge_view(np.float32, (HUGE + 1, 3))
    y = {"short": np.zeros(5, np.int64), "2d": np.zeros((HUGE + 1, 1), np.int64),
         "float": np.zeros(HUGE + 1, np.float64)}[labels]
    exc = TypeError if labels == "float" else ValueError
    peak, error = _kernel_allocations(lambda: _validate.float_arrays(
        [("Z", Z, ("n_samples", "n_classes"))], labels=("y", y)))
    assert isinstance(error, exc) and "y" in str(error), error
    assert peak < REJECT_BYTES


def test_float_arrays_with_labels_returns_them():
    from fusedgrad import _validate

    Z = np.zeros((4, 3), np.float32)
    y = np.array([0, 2, 1, 2], np.uint8)
    Z2, y2 = _validate.float_arrays([("Z", Z, ("n_samples", "n_classes"))], labels=("y", y))
    assert Z2 is Z and y2.dtype == np.intp and np.array_equal(y2, y)
    with pytest.raises(ValueError, match=r"\by\b.*\b3\b"):
        _validate.float_arrays([("Z", Z, ("n_samples", "n_classes"))], labels=("y", y + 1))


# ---------------------------------------------------------------------------
# Huge views of consistent shapes: the samples axis may exceed 2**31 (the
# kernels index with 64-bit integers), but a view must be copied before the
# kernel runs; where that copy cannot be allocated, the error names the
# argument and nothing is computed. Run under an address-space limit in a
# subprocess, so that the test can never take the machine's memory.
# ---------------------------------------------------------------------------

HUGE_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_validation import SPECS, SIZES, call, valid_args, _huge_view

    for spec in SPECS.values():
        call(spec, valid_args(spec))  # compile or load, start the threads
    status = open("/proc/self/status").read()
    vm = int(status.split("VmSize:")[1].split()[0]) * 1024
    limit = vm + 2**30  # one more GiB of address space: no copy of 2**31 rows fits
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    for spec in SPECS.values():
        args = valid_args(spec)
        sizes = dict(SIZES, N=2**31 + 1)
        for name in spec.holders("N"):
            if name == spec.labels:
                args[name] = _huge_view(np.intp, (sizes["N"],))
            else:
                shape = tuple(sizes[s] for s in spec.floats[name])
                args[name] = _huge_view(args[name].dtype, shape)
        try:
            call(spec, args)
        except MemoryError as exc:
            print(spec.function, "MemoryError", exc)
        else:
            print(spec.function, "no error")
    """
)


def test_huge_consistent_views_fail_cleanly():
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", HUGE_SCRIPT, str(TESTS)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert set(lines) == set(SPECS)
    for function, line in lines.items():
        spec = SPECS[function]
        assert line.startswith("MemoryError"), (function, line)
        named = [n for n in spec.holders("N") if f"{n}:" in line]
        assert named, (function, line)


# ---------------------------------------------------------------------------
# Valid but unusual input: the same result as the C-contiguous copy
# ---------------------------------------------------------------------------


def _misaligned(a):
    """A copy of ``a`` at an odd byte offset (not aligned for its dtype)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _memmap(a, tmp_path):
    path = tmp_path / f"arg{id(a)}.npy"
    np.save(path, a)
    return np.load(path, mmap_mode="r")


def _strided(a):
    every_other = (slice(None, None, 2),) * a.ndim
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    big[every_other] = a
    return big[every_other]


def _reversed(a):
    backwards = (slice(None, None, -1),) * a.ndim
    return a[backwards].copy()[backwards]


def _broadcast(a):
    """Equal rows: a view with stride 0 on the first axis."""
    return np.broadcast_to(a[:1], a.shape)


def _overlapping_rows(a):
    """Rows that overlap in memory (a sliding window over one vector)."""
    if a.ndim != 2:
        return a
    flat = np.concatenate([a[0], a[1:, -1]]) if a.shape[0] > 1 else a[0]
    return np.lib.stride_tricks.sliding_window_view(flat, a.shape[1])[: a.shape[0]]


#: float argument -> an unusual array equal to a (possibly changed) valid one
LAYOUTS = {
    "list": lambda a, tmp: a.tolist(),
    "tuple": lambda a, tmp: tuple(map(tuple, a)) if a.ndim == 2 else tuple(a),
    "read-only": lambda a, tmp: _read_only(a),
    "memmap-read-only": _memmap,
    "fortran": lambda a, tmp: np.asfortranarray(a),
    "strided": lambda a, tmp: _strided(a),
    "negative-stride": lambda a, tmp: _reversed(a),
    "broadcast": lambda a, tmp: _broadcast(a),
    "overlapping-rows": lambda a, tmp: _overlapping_rows(a),
    "misaligned": lambda a, tmp: _misaligned(a),
    "big-endian": lambda a, tmp: a.astype(a.dtype.newbyteorder(">")),
    "matrix": lambda a, tmp: np.asmatrix(a) if a.ndim == 2 else a,
}

#: labels -> an unusual array of the same labels
LABEL_LAYOUTS = {
    "list": lambda y, tmp: y.tolist(),
    "read-only": lambda y, tmp: _read_only(y),
    "memmap-read-only": _memmap,
    "negative-stride": lambda y, tmp: _reversed(y),
    "strided": lambda y, tmp: _strided(y),
    "misaligned": lambda y, tmp: _misaligned(y),
    "big-endian": lambda y, tmp: y.astype(">i8"),
    "int8": lambda y, tmp: y.astype(np.int8),
    "uint16": lambda y, tmp: y.astype(np.uint16),
    "int32": lambda y, tmp: y.astype(np.int32),
    "uint64": lambda y, tmp: y.astype(np.uint64),
}


def _dispatchers():
    """Every Numba dispatcher of the package, by qualified name."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    found = {}
    modules = ["fusedgrad._validate"] + [
        f"fusedgrad.kernels.{m.name}" for m in pkgutil.iter_modules(fusedgrad.kernels.__path__)
        if not m.ispkg
    ]
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        for attr, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod_name:
                found[f"{mod_name}.{attr}"] = obj
    return found


def _compiled():
    return {name: len(d.signatures) for name, d in _dispatchers().items()}


def _layout_params():
    for spec in SPECS.values():
        for dtype in (np.float32, np.float64):
            for layout in LAYOUTS:
                if layout in ("list", "tuple") and dtype is np.float32:
                    continue  # lists become float64
                yield pytest.param(spec, layout, dtype,
                                   id=f"{spec.function}-{layout}-{np.dtype(dtype).name}")


def _same(got, want):
    for i, (g, w) in enumerate(zip(outputs(got), outputs(want))):
        assert (g is None and w is None) or (
            type(g) is type(w) and g.dtype == w.dtype and np.array_equal(g, w)
        ), f"output {i} differs from the contiguous input's"


@pytest.mark.parametrize("spec, layout, dtype", list(_layout_params()))
def test_unusual_float_input_same_result(spec, layout, dtype, tmp_path):
    """Every float argument at once in the unusual layout."""
    args = valid_args(spec, dtype, seed=3)
    moved = dict(args)
    for name in spec.floats:
        moved[name] = LAYOUTS[layout](args[name], tmp_path)
        # the layout may change values (broadcast rows): compare like with like
        args[name] = np.ascontiguousarray(np.asarray(moved[name]), dtype=dtype)
    before = {n: np.array(v, copy=True) for n, v in moved.items()}
    want = call(spec, args)
    compiled = _compiled()
    got = call(spec, moved)
    _same(got, want)
    assert _compiled() == compiled, "the unusual layout compiled another specialisation"
    for n, v in moved.items():
        np.testing.assert_array_equal(np.asarray(v), before[n], err_msg=f"{n} was modified")
    # the contiguous result itself is right: the NumPy reference in float64
    case = CASES[spec.case]
    ref_args = as_float64(tuple(args[n] for n in spec.args))
    compare(case, got, case.reference(*ref_args), dtype)


@pytest.mark.parametrize("layout", sorted(LABEL_LAYOUTS))
@pytest.mark.parametrize("name", [s.function for s in SPECS.values() if s.labels])
def test_unusual_labels_same_result(name, layout, tmp_path):
    spec = SPECS[name]
    args = valid_args(spec, np.float32, seed=4)
    want = call(spec, args)
    compiled = _compiled()
    moved = dict(args)
    moved[spec.labels] = LABEL_LAYOUTS[layout](args[spec.labels], tmp_path)
    _same(call(spec, moved), want)
    assert _compiled() == compiled, "the unusual labels compiled another specialisation"


def test_read_only_and_writeable_mixed_share_one_specialisation():
    """Any mix of read-only and writeable arguments runs the one compiled loop."""
    spec = SPECS["mlp_loss_grad"]
    args = valid_args(spec, np.float32, seed=5)
    want = call(spec, args)
    compiled = _compiled()
    names = list(spec.args)
    for mask in range(1, 2 ** len(names)):
        mixed = {n: (_read_only(v) if mask >> i & 1 else v) for i, (n, v) in
                 enumerate(args.items())}
        _same(call(spec, mixed), want)
    assert _compiled() == compiled


def test_read_only_input_is_not_copied():
    """A read-only C-contiguous input is used in place (no memory beyond the outputs)."""
    spec = SPECS["gram"]
    args = {n: _read_only(v) for n, v in valid_args(spec, sizes=dict(SIZES, N=200_000)).items()}
    call(spec, args)
    peak, error = _kernel_allocations(lambda: call(spec, args))
    assert error is None
    assert peak < args["X"].nbytes / 10, f"{peak} bytes allocated for a {args['X'].nbytes} input"


# ---------------------------------------------------------------------------
# affine_sigmoid(out=)
# ---------------------------------------------------------------------------


def _out_cases():
    N, h = SIZES["N"], SIZES["h"]

    cases = {
        "list": (lambda a: np.zeros((N, h)).tolist(), TypeError),
        "str": (lambda a: "out", TypeError),
        "masked": (lambda a: np.ma.masked_array(np.empty((N, h))), TypeError),
        "float32": (lambda a: np.empty((N, h), np.float32), TypeError),
        "big-endian": (lambda a: np.empty((N, h), ">f8"), TypeError),
        "int": (lambda a: np.empty((N, h), np.int64), TypeError),
        "shape-N+1": (lambda a: np.empty((N + 1, h)), ValueError),
        "shape-h+1": (lambda a: np.empty((N, h + 1)), ValueError),
        "shape-transposed": (lambda a: np.empty((h, N)), ValueError),
        "1-D": (lambda a: np.empty(N * h), ValueError),
        "3-D": (lambda a: np.empty((1, N, h)), ValueError),
        "0-D": (lambda a: np.empty(()), ValueError),
        "read-only": (lambda a: _read_only(np.empty((N, h))), ValueError),
        "broadcast": (lambda a: np.broadcast_to(np.empty(h), (N, h)), ValueError),
        "fortran": (lambda a: np.empty((N, h), order="F"), ValueError),
        "strided": (lambda a: np.empty((N, 2 * h))[:, ::2], ValueError),
        "misaligned": (lambda a: _misaligned(np.empty((N, h))), ValueError),
    }
    return [pytest.param(make, exc, id=key) for key, (make, exc) in cases.items()]


@pytest.mark.parametrize("make_out, exc", _out_cases())
def test_affine_sigmoid_bad_out(make_out, exc):
    spec = SPECS["affine_sigmoid"]
    args = valid_args(spec)
    with pytest.raises(exc, match=r"\bout\b"):
        call(spec, args, out=make_out(args))


@pytest.mark.parametrize("overlap", ["X", "W", "b", "X-partly", "X-read-only-alias"])
def test_affine_sigmoid_out_overlapping_input(overlap):
    """``out`` sharing memory with an input would be overwritten while still read."""
    N = d = h = 4  # X, W and out of one shape
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((N, d)), rng.standard_normal((d, h))
    if overlap == "b":
        buf = rng.standard_normal(N * h)
        out, b = buf.reshape(N, h), buf[:h]  # b is the first row of out
    else:
        b = rng.standard_normal(h)
        out = {"X": X, "W": W}.get(overlap)
        if overlap == "X-partly":
            big = rng.standard_normal((N + 1, d))
            X, out = big[:N], big[1:]
        if overlap == "X-read-only-alias":
            out = X
            X = X.view()
            X.flags.writeable = False  # a read-only view of the very memory of out
    name = overlap.split("-")[0]
    with pytest.raises(ValueError, match=rf"\bout\b.*\b{name}\b|\b{name}\b.*\bout\b"):
        fusedgrad.kernels.affine_sigmoid(X, W, b, out=out)


# ---------------------------------------------------------------------------
# The models: the same input classes through every public method
# ---------------------------------------------------------------------------

#: Samples and features of the models' valid input.
MN, MD = 24, 3


def _model_data():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((MN, MD))
    return X, X @ np.array([1.0, -2.0, 0.5]) + 0.1, np.arange(MN) % 3


@pytest.fixture(scope="module")
def fitted():
    import warnings

    from fusedgrad.models import LinearRegression, MLPClassifier

    X, target, labels = _model_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = LinearRegression().fit(X, target)
        mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, labels)
    return {"LinearRegression": lin, "MLPClassifier": mlp}


def _mlp(**kw):
    from fusedgrad.models import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, random_state=0, **kw)


def _lin():
    from fusedgrad.models import LinearRegression

    return LinearRegression()


#: method id -> (model, call(models, X, y), whether it takes y, regressor?)
MODEL_METHODS = {
    "LinearRegression.fit": (lambda m, X, y: _lin().fit(X, y), True, True),
    "LinearRegression.predict": (lambda m, X, y: m["LinearRegression"].predict(X), False, True),
    "LinearRegression.score": (lambda m, X, y: m["LinearRegression"].score(X, y), True, True),
    "MLPClassifier.fit": (lambda m, X, y: _mlp().fit(X, y), True, False),
    "MLPClassifier.partial_fit": (
        lambda m, X, y: _mlp().partial_fit(X, y, classes=[0, 1, 2]), True, False),
    "MLPClassifier.predict": (lambda m, X, y: m["MLPClassifier"].predict(X), False, False),
    "MLPClassifier.predict_proba": (
        lambda m, X, y: m["MLPClassifier"].predict_proba(X), False, False),
    "MLPClassifier.predict_log_proba": (
        lambda m, X, y: m["MLPClassifier"].predict_log_proba(X), False, False),
    "MLPClassifier.score": (lambda m, X, y: m["MLPClassifier"].score(X, y), True, False),
}



def _with_nonfinite(value):
    def make(X):
        X = X.copy()
        X[MN // 2, 1] = value
        return X
    return make


#: X classes: id -> (make(valid X) -> bad X, exception(s), applies to fit/predict, marks)
BAD_X = {
    "str": (lambda X: "abc", TypeError),
    "None": (lambda X: None, TypeError),
    "dict": (lambda X: {}, TypeError),
    "object()": (lambda X: object(), TypeError),
    "0d-array": (lambda X: np.asarray(X[0, 0]), ValueError),
    "python-scalar": (lambda X: 1.5, ValueError),
    "1d": (lambda X: X[0], ValueError),
    "3d": (lambda X: X[None], ValueError),
    "ragged-list": (lambda X: _ragged(X), ValueError),
    "complex": (lambda X: X.astype(np.complex128), (TypeError, ValueError)),
    "strings": (lambda X: X.astype(str), TypeError),
    "object-strings": (lambda X: np.full(X.shape, "a", object), TypeError),
    "datetime64": (lambda X: X.astype("datetime64[s]"), TypeError),
    "nan": (_with_nonfinite(np.nan), ValueError),
    "inf": (_with_nonfinite(np.inf), ValueError),
    "-inf": (_with_nonfinite(-np.inf), ValueError),
    "no-rows": (lambda X: X[:0], ValueError),
    "no-features": (lambda X: X[:, :0], ValueError),
    "masked": (lambda X: np.ma.masked_array(X, mask=X > 1), TypeError),
}

#: X classes that only a fitted model can refuse
BAD_X_FITTED = {
    "one-feature-too-few": (lambda X: X[:, :-1], ValueError),
    "one-feature-too-many": (lambda X: np.column_stack([X, X[:, 0]]), ValueError),
}

#: y classes: id -> (make(valid y) -> bad y, exception(s), marks)
BAD_Y = {
    "None": (lambda y: None, (TypeError, ValueError)),
    "0d": (lambda y: y[0], ValueError),
    "2-columns": (lambda y: np.column_stack([y, y]), ValueError),
    "one-too-few": (lambda y: y[:-1], ValueError),
    "one-too-many": (lambda y: np.append(y, y[0]), ValueError),
    "ragged-list": (lambda y: [y[0], [y[1], y[1]]] + list(y[2:]), ValueError),
}

#: y classes of fit only (score compares labels; NaN is then simply never equal)
BAD_Y_FIT = {
    "nan": (lambda y: np.where(np.arange(MN) == 5, np.nan, y), ValueError),
    "inf": (lambda y: np.where(np.arange(MN) == 5, np.inf, y), ValueError),
    "complex": (lambda y: y.astype(np.complex128), (TypeError, ValueError)),
    "masked": (lambda y: np.ma.masked_array(y, mask=np.arange(MN) == 5), TypeError),
}


def _model_cases():
    cases = []
    for method, (_, takes_y, _) in MODEL_METHODS.items():
        is_fit = ".fit" in method or ".partial_fit" in method
        rows = dict(BAD_X)
        if not is_fit:
            rows.update(BAD_X_FITTED)
        for key, (make, exc, *marks) in rows.items():
            cases.append(pytest.param(method, "X", make, exc, id=f"{method}-X-{key}",
                                      marks=marks))
        if not takes_y:
            continue
        rows = dict(BAD_Y, **(BAD_Y_FIT if is_fit else {}))
        for key, (make, exc, *marks) in rows.items():
            cases.append(pytest.param(method, "y", make, exc, id=f"{method}-y-{key}",
                                      marks=marks))
    return cases


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method, argument, make, exc", _model_cases())
def test_model_bad_input_raises(fitted, method, argument, make, exc):
    call, _, regressor = MODEL_METHODS[method]
    X, target, labels = _model_data()
    y = target if regressor else labels
    call(fitted, X, y)  # the unmutated call is valid
    if argument == "X":
        X = make(X)
    else:
        y = make(y)
    with pytest.raises(exc, match=_names(argument)):
        call(fitted, X, y)
    peak, error = _kernel_allocations(lambda: call(fitted, X, y))
    assert isinstance(error, exc)
    assert peak < REJECT_BYTES, f"{peak} bytes allocated before the error"


def test_model_table_covers_every_public_method():
    from fusedgrad.models import LinearRegression, MLPClassifier

    for cls in (LinearRegression, MLPClassifier):
        public = {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
                  and n not in ("get_params", "set_params", "save")}
        covered = {m.split(".")[1] for m in MODEL_METHODS if m.startswith(cls.__name__ + ".")}
        assert public <= covered, f"{cls.__name__}: {sorted(public - covered)} not in the table"


# Huge views through the models, in a subprocess under an address-space limit
# (a model that copies before it checks then fails with MemoryError instead of
# taking the machine's memory).

HUGE_MODEL_ROWS = {
    # id: (method, argument, X shape, y length, marks)
    "LinearRegression.fit-X-huge-rows": ("LinearRegression.fit", "X", (HUGE + 1, MD), MN, []),
    "LinearRegression.fit-y-huge": ("LinearRegression.fit", "y", (MN, MD), HUGE + 1, []),
    "LinearRegression.predict-X-huge-features": ("LinearRegression.predict", "X",
                                                 (MN, HUGE), MN, []),
    "LinearRegression.score-y-huge": ("LinearRegression.score", "y", (MN, MD), HUGE + 1, []),
    "MLPClassifier.fit-X-huge-rows": ("MLPClassifier.fit", "X", (HUGE + 1, MD), MN, []),
    "MLPClassifier.fit-y-huge": ("MLPClassifier.fit", "y", (MN, MD), HUGE + 1, []),
    "MLPClassifier.predict-X-huge-features": ("MLPClassifier.predict", "X", (MN, HUGE), MN,
                                              []),
    "MLPClassifier.score-y-huge": ("MLPClassifier.score", "y", (MN, MD), HUGE + 1, []),
}

HUGE_MODEL_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, warnings
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_validation as t

    warnings.simplefilter("ignore")
    models = t.fitted.__wrapped__()
    X, target, labels = t._model_data()
    for method, (call, _, regressor) in t.MODEL_METHODS.items():
        call(models, X, target if regressor else labels)  # compile or load everything
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for row, (method, argument, x_shape, y_len, _) in t.HUGE_MODEL_ROWS.items():
        call, _, regressor = t.MODEL_METHODS[method]
        Xh = X if x_shape == X.shape else t._huge_view(np.float64, x_shape)
        y = target if regressor else labels
        yh = y if y_len == MN else np.broadcast_to(y[:1], (y_len,))
        try:
            call(models, Xh, yh)
        except Exception as exc:
            out[row] = [type(exc).__name__, str(exc)[:300]]
        else:
            out[row] = ["no error", ""]
    print(json.dumps(out))
    """
).replace("MN", str(MN))


@pytest.fixture(scope="module")
def huge_model_results():
    proc = subprocess.run([sys.executable, "-c", HUGE_MODEL_SCRIPT, str(TESTS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("row", [pytest.param(r, id=r, marks=m[-1])
                                 for r, m in HUGE_MODEL_ROWS.items()])
def test_model_huge_mismatched_views_rejected_without_copy(huge_model_results, row):
    argument = HUGE_MODEL_ROWS[row][1]
    kind, message = huge_model_results[row]
    assert kind == "ValueError", (kind, message)
    assert re.search(_names(argument, "X" if argument == "y" else "y"), message), message


# ---------------------------------------------------------------------------
# mlp_loss_grad(rows=): the minibatch indices are an input like the others
# ---------------------------------------------------------------------------

BAD_ROWS = {
    "out-of-range": (lambda n: np.array([0, n]), ValueError),
    "negative": (lambda n: np.array([-1, 0]), ValueError),
    "huge": (lambda n: np.array([2**63 - 1], np.int64), ValueError),
    "uint64-huge": (lambda n: np.array([2**64 - 1], np.uint64), ValueError),
    "float": (lambda n: np.array([0.0, 1.0]), TypeError),
    "bool": (lambda n: np.ones(n, bool), TypeError),
    "2d": (lambda n: np.zeros((2, 1), np.int64), ValueError),
    "0d": (lambda n: np.int64(0), ValueError),
    "empty": (lambda n: np.zeros(0, np.int64), ValueError),
    "str": (lambda n: "0", TypeError),
    "ragged": (lambda n: [0, [1, 2]], ValueError),
}


@pytest.mark.parametrize("key", sorted(BAD_ROWS))
def test_mlp_bad_rows(key):
    spec = SPECS["mlp_loss_grad"]
    args = valid_args(spec)
    make, exc = BAD_ROWS[key]
    rows = make(SIZES["N"])
    n = np.size(rows) if key not in ("str", "ragged") else 2
    args["y"] = np.zeros(max(n, 1), np.int64)
    with pytest.raises(exc, match=_names("rows")):
        call(spec, args, rows=rows)


@pytest.mark.parametrize("layout", ["list", "read-only",
                                    "negative-stride", "int8", "uint64"])
def test_mlp_unusual_rows_same_result(layout):
    spec = SPECS["mlp_loss_grad"]
    args = valid_args(spec, np.float32, seed=6)
    rows = np.array([3, 0, 6, 6, 2])
    args["y"] = args["y"][: rows.size]
    want = call(spec, args, rows=rows)
    moved = {"list": rows.tolist(), "read-only": _read_only(rows),
             "negative-stride": _reversed(rows), "int8": rows.astype(np.int8),
             "uint64": rows.astype(np.uint64)}[layout]
    compiled = _compiled()
    _same(call(spec, args, rows=moved), want)
    assert _compiled() == compiled


def test_indices_validator():
    from fusedgrad import _validate

    r = np.array([2, 0, 2], np.int8)
    r.flags.writeable = False
    got = _validate.indices("rows", r, 3)
    assert got.dtype == np.intp and got.flags.writeable and np.array_equal(got, r)
    got = _validate.indices("rows", np.arange(4), 4)
    assert got.flags.c_contiguous
    for bad, exc in [([3], ValueError), ([-1], ValueError), (np.array([], int), ValueError),
                     ([[0]], ValueError), ([0.0], TypeError), ([True], TypeError),
                     ("0", TypeError)]:
        with pytest.raises(exc, match=r"\brows\b"):
            _validate.indices("rows", bad, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 16383, 16385, 1 << 18, (1 << 18) + 1, 3 * 16384 + 5])
def test_all_finite_both_paths_agree_with_numpy(dtype, n):
    """The serial check (up to 2**18 elements) and the parallel one (above) find
    every NaN/inf wherever it is, and pass the largest and the subnormal floats."""
    info = np.finfo(dtype)
    a = np.full(n, info.max, dtype)
    a[n // 2:] = info.smallest_subnormal
    a[::7] = -info.max
    assert _validate.all_finite(a) and np.isfinite(a).all()
    for index in sorted({0, n - 1, min(n - 1, 16384), n // 2}):
        for value in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[index] = value
            assert not _validate.all_finite(b), (index, value)
            # as a 2-D view too (the check flattens C-contiguous arrays)
            if n % 5 == 0:
                assert not _validate.all_finite(b.reshape(5, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [(1, 1, 1), (300, 7, 1), ((1 << 18) - 2, 1, 1),
                                   ((1 << 18) - 1, 1, 1)])
def test_require_finite_names_the_first_bad_array_on_both_paths(dtype, sizes):
    """Small inputs (2**18 elements or fewer in all) are scanned in one compiled call,
    larger ones array by array: both name the first array holding NaN or inf, and pass
    the largest and the subnormal floats."""
    info = np.finfo(dtype)
    arrays = []
    for i, n in enumerate(sizes):
        a = np.full(n, info.max if i % 2 else info.smallest_subnormal, dtype)
        a[::3] = -info.max
        arrays.append(a.reshape(-1, 1) if i == 0 else a)  # a 2-D one among them
    names = ["A", "B", "C"]
    _validate.require_finite(*zip(names, arrays))
    for bad in range(3):
        for value in (np.nan, np.inf, -np.inf):
            for later in range(bad, 3):  # a second bad array after the first
                broken = [a.copy() for a in arrays]
                broken[bad].reshape(-1)[-1] = value
                broken[later].reshape(-1)[0] = np.nan
                with pytest.raises(ValueError, match=f"^{names[bad]} contains NaN"):
                    _validate.require_finite(*zip(names, broken))


def test_require_finite_layouts_and_mixed_dtypes():
    # read-only, non-contiguous and mixed-dtype inputs (the array-by-array path for the
    # last two) are scanned as well
    a = np.ones((4, 6), np.float32)
    ro = a.copy()
    ro[2, 3] = np.inf
    ro.flags.writeable = False
    strided = a.copy()
    strided[1, 2] = np.nan
    f64 = np.ones(3)
    f64[1] = np.nan
    with pytest.raises(ValueError, match="^R contains"):
        _validate.require_finite(("A", a), ("R", ro))
    with pytest.raises(ValueError, match="^S contains"):
        _validate.require_finite(("A", a), ("S", strided[:, ::2]))
    with pytest.raises(ValueError, match="^D contains"):
        _validate.require_finite(("A", a), ("D", f64))
    _validate.require_finite()
    _validate.require_finite(("A", a), ("T", a.T), ("E", np.ones(2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_one_pass_checks_and_sum(dtype):
    """The one-pass check of sample weights: the float64 sum (against math.fsum),
    the nonzero count, the same bits for any thread count, and each error."""
    import math

    import numba

    rng = np.random.default_rng(3)
    w = (rng.uniform(0, 2, 300_001) * (rng.random(300_001) < 0.8)).astype(dtype)
    total, nonzero = _validate.weights("sample_weight", w)
    assert total == pytest.approx(math.fsum(w.astype(np.float64)), rel=1e-14)
    assert nonzero == np.count_nonzero(w)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _validate.weights("sample_weight", w) == (total, nonzero)
    finally:
        numba.set_num_threads(threads)
    for bad, match in ((np.nan, "contains NaN or infinity"), (np.inf, "contains NaN or infinity"),
                       (-0.25, "must be non-negative: it holds -0.25")):
        v = w.copy()
        v[200_000] = bad
        with pytest.raises(ValueError, match=match):
            _validate.weights("sample_weight", v)
    with pytest.raises(ValueError, match="positive sum"):
        _validate.weights("sample_weight", np.zeros(10, dtype))
    assert _validate.weights("w", np.zeros(10, dtype), positive_sum=False) == (0.0, 0)
