"""Import and the compile cache.

* Importing ``fusedgrad`` (and ``fusedgrad.kernels``, ``fusedgrad.models``)
  compiles nothing and starts no Numba threads: every dispatcher of the
  package is still empty afterwards, and a process can fork safely.
* ``NUMBA_CACHE_DIR`` is honoured: the compiled kernels are written there,
  and a second process loads them from there instead of compiling.
* An install the process cannot write to (a read-only site-packages, no
  writable home) still imports and runs, with at most one warning; with
  ``NUMBA_CACHE_DIR`` pointing to a writable directory it caches there.

The read-only install is simulated by a copy of the package made read-only;
as root, whose permissions bypass file modes, the subprocess runs without
the capabilities that allow that (``setpriv``).

``python tests/test_hardening_cache.py`` measures the import time beyond
``import numba`` (median of 7 fresh interpreters).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "fusedgrad"

IMPORTS = ["fusedgrad", "fusedgrad.reference", "fusedgrad.kernels", "fusedgrad.models"]

DISPATCHERS = textwrap.dedent(
    """
    def dispatchers():
        import importlib, pkgutil, sys
        from numba.core.registry import CPUDispatcher
        import fusedgrad
        found = {}
        for info in pkgutil.walk_packages(fusedgrad.__path__, "fusedgrad."):
            mod = sys.modules.get(info.name)
            if mod is None:
                continue  # not imported: nothing of it can have compiled
            for attr, obj in vars(mod).items():
                if isinstance(obj, CPUDispatcher) and obj.__module__ == info.name:
                    found[info.name + "." + attr] = obj
        return found
    """
)

IMPORT_PROBE = DISPATCHERS + textwrap.dedent(
    """
    import importlib, json, sys, time
    t0 = time.perf_counter()
    import numba
    t1 = time.perf_counter()
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    t2 = time.perf_counter()
    from numba.np.ufunc import parallel
    found = dispatchers()
    print(json.dumps(dict(
        numba_s=t1 - t0, fusedgrad_s=t2 - t1, dispatchers=len(found),
        compiled={k: len(d.signatures) for k, d in found.items() if d.signatures},
        threads_started=bool(parallel._is_initialized),
        modules=sorted(m for m in sys.modules if m.startswith("fusedgrad")))))
    """
)


def _python(code, *args, env=None, cwd=None, prefix=(), timeout=300):
    return subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _import_probe(**env):
    proc = _python(IMPORT_PROBE, *IMPORTS, env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_compiles_nothing():
    info = _import_probe()
    assert "fusedgrad.kernels" in info["modules"] and "fusedgrad._validate" in info["modules"]
    assert info["dispatchers"] >= 7, info  # the kernels' cores and helpers are found
    assert info["compiled"] == {}, f"compiled at import: {info['compiled']}"
    assert not info["threads_started"], "importing started Numba's threads (unsafe to fork)"


# ---------------------------------------------------------------------------
# NUMBA_CACHE_DIR
# ---------------------------------------------------------------------------

CALL = DISPATCHERS + textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import fusedgrad.kernels as K
        Z = np.linspace(-3, 3, 40, dtype=np.float32).reshape(10, 4)
        loss, dZ = K.softmax_cross_entropy(Z, np.arange(10) % 4)
    found = dispatchers()
    used = {k: d for k, d in found.items() if d.signatures}
    print(json.dumps(dict(
        loss=float(loss),
        hits=sum(sum(d.stats.cache_hits.values()) for d in used.values()),
        misses=sum(sum(d.stats.cache_misses.values()) for d in used.values()),
        cache_paths=sorted({d.stats.cache_path for d in used.values()} - {None}),
        uncached=sorted(k for k, d in used.items() if type(d._cache).__name__ == "NullCache"),
        warnings=[str(w.message) for w in caught])))
    """
)


def _call(env, prefix=(), cwd=None):
    proc = _python(CALL, env=env, prefix=prefix, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cache_files(root):
    return sorted(p.name for p in Path(root).rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_numba_cache_dir_honoured(tmp_path):
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    first = _call(env)
    files = _cache_files(cache)
    for core in ("softmax._softmax_cross_entropy", "_validate._first_nonfinite"):
        assert any(f.startswith(core) and f.endswith(".nbi") for f in files), (core, files)
        assert any(f.startswith(core) and f.endswith(".nbc") for f in files), (core, files)
    assert first["misses"] > 0 and first["hits"] == 0, first  # compiled, into the new dir
    assert all(p.startswith(str(cache)) for p in first["cache_paths"]), first
    second = _call(env)
    assert second["hits"] > 0 and second["misses"] == 0, second  # loaded, not compiled
    assert second["loss"] == first["loss"]
    assert not first["warnings"] and not second["warnings"]


# ---------------------------------------------------------------------------
# A read-only install
# ---------------------------------------------------------------------------


def _read_only_install(tmp_path):
    """A copy of the package in a read-only directory, and a read-only home."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "fusedgrad",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    home = tmp_path / "home"
    home.mkdir()
    for path in [site, home, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return site, home


def _unprivileged():
    """A command prefix under which file modes apply (root otherwise ignores them)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a directory unwritable")
    prefix = (setpriv, "--inh-caps=-all",
              "--bounding-set=-dac_override,-dac_read_search,-fowner")
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[-200:]}")
    return prefix


def _read_only_env(site, home, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_CACHE", "XDG_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _check_read_only_install_works(info, site):
    assert info["loss"] > 0
    assert info["hits"] == 0 and info["uncached"], info  # compiled in memory
    assert len(info["warnings"]) <= 1, info["warnings"]
    if info["warnings"]:
        assert "NUMBA_CACHE_DIR" in info["warnings"][0], info["warnings"]
    assert not any(p.startswith(str(site)) for p in info["cache_paths"])
    assert _cache_files(site) == []


def test_read_only_install_without_writable_cache(tmp_path):
    prefix = _unprivileged()
    site, home = _read_only_install(tmp_path)
    info = _call(_read_only_env(site, home), prefix=prefix, cwd=tmp_path)
    _check_read_only_install_works(info, site)


def test_read_only_install_with_unwritable_numba_cache_dir(tmp_path):
    prefix = _unprivileged()
    site, home = _read_only_install(tmp_path)
    info = _call(_read_only_env(site, home, NUMBA_CACHE_DIR=str(home / "cache")),
                 prefix=prefix, cwd=tmp_path)
    _check_read_only_install_works(info, site)


def test_read_only_install_caches_in_numba_cache_dir(tmp_path):
    prefix = _unprivileged()
    site, home = _read_only_install(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    env = _read_only_env(site, home, NUMBA_CACHE_DIR=str(cache))
    info = _call(env, prefix=prefix, cwd=tmp_path)
    assert info["loss"] > 0 and not info["warnings"], info
    assert _cache_files(site) == []
    assert any(f.endswith(".nbi") for f in _cache_files(cache))
    again = _call(env, prefix=prefix, cwd=tmp_path)
    assert again["hits"] > 0 and again["misses"] == 0 and again["loss"] == info["loss"]


# ---------------------------------------------------------------------------
# Measurement: python tests/test_hardening_cache.py
# ---------------------------------------------------------------------------


def measure_import(runs=7):
    """Median seconds of ``import numba`` and of the package beyond it."""
    infos = [_import_probe() for _ in range(runs)]
    return (statistics.median(i["numba_s"] for i in infos),
            statistics.median(i["fusedgrad_s"] for i in infos))


if __name__ == "__main__":
    numba_s, package_s = measure_import()
    print(f"import numba: {numba_s:.3f} s; import {', '.join(IMPORTS)} beyond it: "
          f"{package_s:.3f} s (median of 7 fresh interpreters)")
