"""Bad input to the kernels: every check of :mod:`fusedgrad._validate`, per kernel.

The jitted loops do no bounds checks, so every kernel must refuse, before any
compiled code runs, anything that is not what it documents. The cases are
generated from one table (:data:`SPECS`: each kernel's arguments and their
shapes in named sizes) and each must raise the documented exception class,
``TypeError`` for a wrong kind of value and ``ValueError`` for a wrong value,
with a message that names the offending argument.
"""

import inspect
from dataclasses import dataclass, field

import numpy as np
import pytest

import fusedgrad.kernels

#: Sizes of the valid inputs; all different, so a check that confuses two
#: sizes cannot pass by accident.
SIZES = dict(N=7, d=3, h=4, K=5)


@dataclass(frozen=True)
class Spec:
    """A kernel's positional arguments: float arrays by their shapes, and labels."""

    function: str
    args: tuple  # positional argument names, in order
    floats: dict  # name -> shape in size names
    labels: str = None  # name of the integer-label argument, if any
    optional: tuple = ()  # arguments that may be None
    extra: dict = field(default_factory=dict)  # other keyword arguments of a valid call

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
             labels="y"),
        Spec("softmax_cross_entropy", ("Z", "y"), {"Z": ("N", "K")}, labels="y"),
        Spec("affine_sigmoid", ("X", "W", "b"), {"X": ("N", "d"), "W": ("d", "h"), "b": ("h",)}),
        Spec("affine_sigmoid_backward", ("X", "A", "dA", "W"),
             {"X": ("N", "d"), "A": ("N", "h"), "dA": ("N", "h"), "W": ("d", "h")},
             optional=("W",)),
        Spec("ols_loss_grad", ("X", "y", "w"), {"X": ("N", "d"), "y": ("N",), "w": ("d",)}),
        Spec("gram", ("X", "y"), {"X": ("N", "d"), "y": ("N",)}),
    ]
}


def test_specs_cover_every_kernel():
    assert set(SPECS) == set(fusedgrad.kernels.__all__)


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


def _cases():
    """(spec, id, mutate(args) -> None, exception, regex of names)."""
    cases = []

    def add(spec, case_id, mutate, exc, *names, **kwargs):
        cases.append(pytest.param(spec, mutate, exc, _names(*names), kwargs,
                                  id=f"{spec.function}-{case_id}"))

    for spec in SPECS.values():
        for name in spec.args:
            is_float = name in spec.floats

            # not an array at all
            def set_to(value, name=name):
                return lambda a: a.__setitem__(name, value)

            add(spec, f"{name}=str", set_to("abc"), TypeError, name)
            if name not in spec.optional:
                add(spec, f"{name}=None", set_to(None), TypeError, name)
            add(spec, f"{name}=object()", set_to(object()), TypeError, name)

            # wrong number of dimensions: one fewer, one more
            def fewer(a, name=name):
                a[name] = np.asarray(a[name][0])

            def more(a, name=name):
                a[name] = a[name][None]

            add(spec, f"{name}-fewer-dims", fewer, ValueError, name)
            add(spec, f"{name}-more-dims", more, ValueError, name)

            if not is_float:
                continue

            # kinds that are not float32 / float64
            for bad in (np.int64, np.int32, np.bool_, np.complex128, np.float16, object):
                def cast(a, name=name, bad=bad):
                    a[name] = a[name].astype(bad)

                add(spec, f"{name}-{np.dtype(bad).name}", cast, TypeError, name)

            # the other precision than the rest
            def mixed(a, name=name):
                a[name] = a[name].astype(np.float32)

            if len(spec.floats) > 1:
                add(spec, f"{name}-float32-among-float64", mixed, TypeError, name)

            # NaN and inf
            for value in (np.nan, np.inf, -np.inf):
                def poison(a, name=name, value=value):
                    arr = a[name].copy()
                    arr.reshape(-1)[-1] = value
                    a[name] = arr

                add(spec, f"{name}-{value}", poison, ValueError, name)

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

        # empty: one size 0 in every argument that has it
        for size in SIZES:
            holders = spec.holders(size)
            if not holders:
                continue

            def empty(a, size=size, spec=spec):
                a.update(valid_args(spec, sizes={**SIZES, size: 0}))

            add(spec, f"empty-{size}=0", empty, ValueError, *holders)

        # labels
        if spec.labels:
            y = spec.labels

            def label(value, y=y):
                def mutate(a):
                    labels = a[y].copy()
                    labels[-1] = value
                    a[y] = labels
                return mutate

            add(spec, f"{y}=-1", label(-1), ValueError, y)
            add(spec, f"{y}=K", label(SIZES["K"]), ValueError, y)
            for bad in (np.float64, np.float32, np.bool_, np.complex128, object):
                def cast_labels(a, y=y, bad=bad):
                    a[y] = a[y].astype(bad)

                add(spec, f"{y}-{np.dtype(bad).name}", cast_labels, TypeError, y)

            def too_short(a, y=y):
                a[y] = a[y][:-1]

            add(spec, f"{y}-too-short", too_short, ValueError, y)

    # mixed precision the other way round: one float64 among float32
    for spec in SPECS.values():
        for name in spec.floats if len(spec.floats) > 1 else ():
            def mixed64(a, name=name, spec=spec):
                for n in spec.floats:
                    a[n] = a[n].astype(np.float32 if n != name else np.float64)

            add(spec, f"{name}-float64-among-float32", mixed64, TypeError, name)
    return cases


@pytest.mark.parametrize("spec, mutate, exc, names, kwargs", _cases())
def test_bad_input_raises(spec, mutate, exc, names, kwargs):
    args = valid_args(spec)
    call(spec, args)  # the unmutated call is valid
    mutate(args)
    with pytest.raises(exc, match=names):
        call(spec, args, **kwargs)


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
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(o is None or np.ndim(o) == 0 or o.size for o in outputs)
    if np.isnan(value):
        assert not all(np.all(np.isfinite(o)) for o in outputs if o is not None)


def test_backward_without_W_is_valid():
    spec = SPECS["affine_sigmoid_backward"]
    args = valid_args(spec)
    dW, db, dX = spec.kernel(args["X"], args["A"], args["dA"])
    assert dX is None
    assert dW.shape == (SIZES["d"], SIZES["h"]) and db.shape == (SIZES["h"],)


# ---------------------------------------------------------------------------
# affine_sigmoid(out=)
# ---------------------------------------------------------------------------


def _out_cases():
    N, h = SIZES["N"], SIZES["h"]

    def ro(a):
        out = np.empty((N, h))
        out.flags.writeable = False
        return out

    cases = {
        "list": (lambda a: np.zeros((N, h)).tolist(), TypeError),
        "str": (lambda a: "out", TypeError),
        "float32": (lambda a: np.empty((N, h), np.float32), TypeError),
        "int": (lambda a: np.empty((N, h), np.int64), TypeError),
        "shape-N+1": (lambda a: np.empty((N + 1, h)), ValueError),
        "shape-h+1": (lambda a: np.empty((N, h + 1)), ValueError),
        "shape-transposed": (lambda a: np.empty((h, N)), ValueError),
        "1-D": (lambda a: np.empty(N * h), ValueError),
        "3-D": (lambda a: np.empty((1, N, h)), ValueError),
        "read-only": (ro, ValueError),
        "fortran": (lambda a: np.empty((N, h), order="F"), ValueError),
        "strided": (lambda a: np.empty((N, 2 * h))[:, ::2], ValueError),
    }
    return [pytest.param(make, exc, id=key) for key, (make, exc) in cases.items()]


@pytest.mark.parametrize("make_out, exc", _out_cases())
def test_affine_sigmoid_bad_out(make_out, exc):
    spec = SPECS["affine_sigmoid"]
    args = valid_args(spec)
    with pytest.raises(exc, match=r"\bout\b"):
        call(spec, args, out=make_out(args))


@pytest.mark.parametrize("overlap", ["X", "W", "b", "X-partly"])
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
    name = overlap.split("-")[0]
    with pytest.raises(ValueError, match=rf"\bout\b.*\b{name}\b|\b{name}\b.*\bout\b"):
        fusedgrad.kernels.affine_sigmoid(X, W, b, out=out)
