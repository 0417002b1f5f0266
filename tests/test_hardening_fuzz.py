"""Fuzzing the input checks: random shapes, dtypes, layouts and values.

Every kernel is called with arguments drawn by hypothesis: sizes from 0 to 5,
each argument either valid or mutated (another dtype, another number of
dimensions or shape, a list, a masked array, a 0-d value, a ragged list, NaN
or inf, labels out of range or of a float dtype), in any memory layout
(Fortran, reversed, strided, read-only, misaligned, byte-swapped). An
independent oracle (:func:`expected_culprits`, plain NumPy, written from the
documented contract) says whether the call is valid. A valid call must return
the NumPy reference's result within the comparison table's tolerance; an
invalid one must raise ``ValueError`` or ``TypeError`` naming one of the
offending arguments. Anything else (another exception, a wrong result, a
crash) fails.

The fuzz runs in a subprocess, so that a segmentation fault or an abort in
compiled code fails the test instead of killing the test run. Run this file
directly (``python tests/test_hardening_fuzz.py [examples]``) for a longer
search.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent

#: Examples of the run inside the test suite (about 10-20 s on 2 cores).
EXAMPLES = 1200


def test_fuzz_in_subprocess():
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), str(EXAMPLES)],
        env=env, capture_output=True, text=True, timeout=600, cwd=str(TESTS.parent),
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"fuzz failed or crashed (rc {proc.returncode}):\n{tail}"
    found = re.search(r"valid (\d+) invalid (\d+)", proc.stdout)
    assert found, tail
    valid, invalid = map(int, found.groups())
    # the strategy reaches both sides of the contract
    assert valid >= EXAMPLES // 10 and invalid >= EXAMPLES // 10, (valid, invalid)


# ---------------------------------------------------------------------------
# The fuzz itself (runs in the subprocess)
# ---------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array_or_none(value):
    """What the kernels see: np.asarray of the value, or None if it is no array."""
    if isinstance(value, np.ma.MaskedArray):
        return None
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, int, float, np.generic)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError):
            return None
    return None


def expected_culprits(spec, args):
    """The set of arguments that make the call invalid (empty: valid).

    Written from the documented contract, independently of fusedgrad._validate.
    """
    culprits = set()
    arrays = {}
    dtypes = {}
    for name in spec.floats:
        value = args[name]
        if value is None and name in spec.optional:
            continue
        a = _as_array_or_none(value)
        if a is None or a.dtype.kind != "f" or a.dtype.newbyteorder("=") not in _FLOATS:
            culprits.add(name)
            continue
        dtypes[name] = a.dtype.newbyteorder("=")
        if a.ndim != len(spec.floats[name]):
            culprits.add(name)
            continue
        arrays[name] = a
    if len(set(dtypes.values())) > 1:
        culprits.update(dtypes)
    # sizes: every named size must agree across arguments and be nonzero
    seen = {}
    for name, a in arrays.items():
        for size, n in zip(spec.floats[name], a.shape):
            seen.setdefault(size, []).append((name, n))
    y = None
    if spec.labels:
        y = _as_array_or_none(args[spec.labels])
        if (y is None or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer)
                or y.ndim != 1):
            culprits.add(spec.labels)
            y = None
        else:
            seen.setdefault("N", []).append((spec.labels, y.shape[0]))
    for size, holders in seen.items():
        if len({n for _, n in holders}) > 1 or any(n == 0 for _, n in holders):
            culprits.update(name for name, _ in holders)
    for name, a in arrays.items():
        if a.size and not np.all(np.isfinite(a)):
            culprits.add(name)
    if y is not None and y.size and "K" in seen:
        K = seen["K"][0][1]
        if y.min() < 0 or y.max() >= K:
            culprits.add(spec.labels)
    return culprits


def _layout(a, how):
    """``a`` (an ndarray) in the memory layout ``how``; equal values."""
    if how == "C" or a.ndim == 0:
        return a
    if how == "F":
        return np.asfortranarray(a)
    if how == "reversed":
        back = (slice(None, None, -1),) * a.ndim
        return a[back].copy()[back]
    if how == "strided":
        every = (slice(None, None, 2),) * a.ndim
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        big[every] = a
        return big[every]
    if how == "read-only":
        a = a.copy()
        a.flags.writeable = False
        return a
    if how == "misaligned" and a.dtype.kind != "O":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = np.frombuffer(buf.data, a.dtype, a.size, 1).reshape(a.shape)
        out[...] = a
        return out
    if how == "byteswapped":
        return a.astype(a.dtype.newbyteorder("S"))
    if how == "list":
        return a.tolist()
    return a


def run(examples):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import fusedgrad.kernels  # noqa: F401  (compiles nothing; kernels load on first call)
    from cases import CASES, as_float64, outputs
    from test_validation import SPECS

    layouts = ["C", "C", "C", "F", "reversed", "strided", "read-only", "misaligned",
               "byteswapped", "list"]
    float_kinds = ["valid"] * 12 + ["dtype", "shape", "ndim", "nan", "inf", "masked",
                                   "scalar", "ragged", "none", "str"]
    label_kinds = ["valid"] * 8 + ["range", "negative", "float", "bool", "shape", "ndim",
                                  "list", "huge"]
    other_dtypes = [np.int64, np.int32, np.bool_, np.complex128, np.float16, object, np.uint8]
    counts = {"valid": 0, "invalid": 0}

    @st.composite
    def calls(draw):
        spec = SPECS[draw(st.sampled_from(sorted(SPECS)))]
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        sizes = {s: draw(st.integers(0 if s != "K" else 1, 5)) for s in ("N", "d", "h", "K")}
        if draw(st.integers(0, 4)):  # mostly nonempty
            sizes = {s: max(1, v) for s, v in sizes.items()}
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        args = {}
        for name in spec.args:
            if name == spec.labels:
                kind = draw(st.sampled_from(label_kinds))
                n = sizes["N"] + (draw(st.sampled_from([-1, 1])) if kind == "shape" else 0)
                y = rng.integers(0, sizes["K"], size=max(n, 0))
                if kind == "range" and y.size:
                    y[draw(st.integers(0, y.size - 1))] = sizes["K"]
                elif kind == "negative" and y.size:
                    y[0] = -1
                elif kind == "float":
                    y = y.astype(np.float64)
                elif kind == "bool":
                    y = y.astype(bool)
                elif kind == "ndim":
                    y = y[:, None]
                elif kind == "huge" and y.size:
                    y = y.astype(np.uint64)
                    y[-1] = 2**64 - 1
                if kind == "list":
                    args[name] = y.tolist()
                else:
                    args[name] = _layout(y, draw(st.sampled_from(layouts[:-1])))
                continue
            kind = draw(st.sampled_from(float_kinds))
            shape = [sizes[s] for s in spec.floats[name]]
            if kind == "none" and name in spec.optional:
                args[name] = None
                continue
            if kind == "shape":
                axis = draw(st.integers(0, len(shape) - 1))
                shape[axis] = draw(st.integers(0, 6))
            if kind == "ndim":
                ndim = draw(st.sampled_from([n for n in range(4) if n != len(shape)]))
                shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
            a = rng.standard_normal(shape)
            if name == "A":
                a = 1.0 / (1.0 + np.exp(-a))  # a sigmoid output
            a = a.astype(dtype)
            if kind == "dtype":
                a = a.astype(draw(st.sampled_from(other_dtypes + [
                    np.float64 if dtype is np.float32 else np.float32])))
            if kind in ("nan", "inf") and a.size:
                a.reshape(-1)[draw(st.integers(0, a.size - 1))] = np.nan if kind == "nan" \
                    else draw(st.sampled_from([np.inf, -np.inf]))
            if kind == "masked":
                args[name] = np.ma.masked_array(a)
            elif kind == "scalar":
                args[name] = float(rng.standard_normal())
            elif kind == "ragged" and a.ndim >= 1 and a.size > 1:
                rows = a.tolist()
                rows[-1] = rows[-1][:-1] if a.ndim > 1 else [rows[-1], rows[-1]]
                args[name] = rows
            elif kind == "str":
                args[name] = "X"
            else:
                args[name] = _layout(a, draw(st.sampled_from(layouts)))
        return spec, args

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(calls())
    def fuzz(call):
        spec, args = call
        culprits = expected_culprits(spec, args)
        positional = [args[n] for n in spec.args]
        if culprits:
            counts["invalid"] += 1
            try:
                spec.kernel(*positional, **spec.extra)
            except (ValueError, TypeError) as exc:
                named = {n for n in spec.args if re.search(rf"\b{n}\b", str(exc))}
                assert named & culprits, f"{exc!r} names {named}, culprits {culprits}"
            else:
                raise AssertionError(f"no error; culprits {culprits}")
            return
        counts["valid"] += 1
        got = spec.kernel(*positional, **spec.extra)
        plain = tuple(None if v is None else np.asarray(v) for v in positional)
        dtype = next(a.dtype.newbyteorder("=") for n, a in zip(spec.args, plain)
                     if n in spec.floats and a is not None)
        want = CASES[spec.case].reference(*as_float64(tuple(
            None if a is None else (a.astype(np.float64) if a.dtype.kind == "f" else a)
            for a in plain)))
        # The table's tolerance, relative to max(1, |reference|): the inputs
        # are of order one, so a result that cancels to nearly 0 is still
        # known to about the rounding of its terms, not relative to itself.
        tol = CASES[spec.case].tolerance[dtype]
        for i, (g, w) in enumerate(zip(outputs(got), outputs(want))):
            if w is None:
                assert g is None, i
                continue
            assert g.dtype == dtype and np.shape(g) == np.shape(w), i
            err = np.max(np.abs(np.asarray(g, np.float64) - w))
            assert err <= tol * max(1.0, np.max(np.abs(w))), f"output {i}: error {err:.3g}"

    fuzz()
    print(f"valid {counts['valid']} invalid {counts['invalid']}")


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
