"""Where numba keeps the compiled kernels (kernels/__init__.py), checked in real
subprocesses: numba fixes a kernel's cache directory when it decorates it, at import,
so only a fresh interpreter shows what a fresh server process would do.

The slow one starts ``decision serve`` on an empty cache (it compiles, ~20 s on an
idle 2-core machine) and again on the cache it left (it must compile nothing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import kernels
from tests.conftest import TEST_CATALOG, stop_process

ROOT = Path(__file__).resolve().parent.parent
PRINT_DIR = "import kernels, numba; print(numba.config.CACHE_DIR)"
HASH_DIR = re.compile(r"numba-[0-9a-f]{16}")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's own environment minus whatever cache settings the operator has, with
    a private HOME and TMPDIR so nothing here touches the real caches."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", kernels.CACHE_ENV, "XDG_CACHE_HOME")
           and not k.startswith("NUMBA_")}
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"))
    env.update(extra)
    return env


def cache_dir_in(env: dict[str, str], code: str = PRINT_DIR, pythonpath: Path | None = None,
                 ) -> tuple[Path, str]:
    if pythonpath is not None:
        env = {**env, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=env["HOME"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_default_is_the_user_cache_dir_not_the_source_tree(tmp_path):
    where, err = cache_dir_in(clean_env(tmp_path))
    assert where.parent == tmp_path / "home/.cache/decision/kernels"
    assert HASH_DIR.fullmatch(where.name)
    assert not where.is_relative_to(ROOT) and not where.is_relative_to(Path(kernels.__file__).parent)
    assert err == ""  # nothing to warn about


def test_xdg_cache_home_moves_the_default(tmp_path):
    where, _ = cache_dir_in(clean_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert where.parent == tmp_path / "xdg/decision/kernels"
    # relative values are invalid by the XDG spec: ignored
    where, _ = cache_dir_in(clean_env(tmp_path, XDG_CACHE_HOME="relative/cache"))
    assert where.parent == tmp_path / "home/.cache/decision/kernels"


def test_decision_kernel_cache_is_honoured_with_the_source_hash_kept(tmp_path):
    default, _ = cache_dir_in(clean_env(tmp_path))
    where, _ = cache_dir_in(clean_env(tmp_path, DECISION_KERNEL_CACHE=str(tmp_path / "kc")))
    assert where == tmp_path / "kc" / default.name


def test_numba_cache_dir_set_by_the_operator_wins(tmp_path):
    where, _ = cache_dir_in(clean_env(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "nb"),
                                      DECISION_KERNEL_CACHE=str(tmp_path / "kc")))
    assert where == tmp_path / "nb"


def test_a_changed_kernel_source_gets_a_fresh_directory(tmp_path):
    """The property the hash directory exists for: numba keys a cached function by its
    own file only, so a changed callee elsewhere must never meet old machine code."""
    src = Path(kernels.__file__).parent
    for copy in ("a", "b"):
        shutil.copytree(src, tmp_path / copy / "kernels",
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "b/kernels/selection.py", "a") as f:
        f.write("\n# changed\n")
    env = clean_env(tmp_path)
    a, _ = cache_dir_in(env, pythonpath=tmp_path / "a")
    b, _ = cache_dir_in(env, pythonpath=tmp_path / "b")
    assert a.parent == b.parent and a.name != b.name


def test_an_unwritable_default_falls_back_to_a_private_temp_dir_with_a_warning(tmp_path):
    blocker = tmp_path / "a-file"  # no directory can be made under a file, even by root
    blocker.write_text("")
    code = ("import kernels, numba, numpy as np\n"
            "from kernels.selection import top_k\n"
            "assert list(top_k(np.array([1.0, 3.0, 2.0]), 2)) == [1, 2]\n"
            "print(numba.config.CACHE_DIR)")
    for env in (clean_env(tmp_path, XDG_CACHE_HOME=str(blocker)),
                clean_env(tmp_path, DECISION_KERNEL_CACHE=str(blocker / "sub"))):
        where, err = cache_dir_in(env, code)
        private = tmp_path / "tmp" / f"decision-kernels-{os.getuid()}"
        assert where.parent == private and HASH_DIR.fullmatch(where.name)
        assert "not writable" in err and str(where) in err
        assert private.stat().st_mode & 0o777 == 0o700
        assert list(where.rglob("*.nbi")), "the kernel was cached in the fallback"


def test_a_temp_dir_someone_else_could_write_is_not_used(tmp_path):
    """numba unpickles what it finds in its cache: a shared directory is never reused."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    shared = tmp_path / "tmp" / f"decision-kernels-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    env = clean_env(tmp_path, XDG_CACHE_HOME=str(blocker))
    code = "import kernels, os; print(os.environ['DECISION_KERNEL_CACHE'], kernels.cache_dir)"
    pair, err = cache_dir_in(env, code)
    exported, where = (Path(p) for p in str(pair).split(" "))
    assert exported != shared and exported.parent == tmp_path / "tmp"
    assert exported.stat().st_mode & 0o777 == 0o700  # mkdtemp's
    assert where.parent == exported and "not writable" in err and str(where) in err
    # exported, so the processes it starts share that directory instead of making their own
    child, err = cache_dir_in({**env, "DECISION_KERNEL_CACHE": str(exported)})
    assert child == where and err == ""


def test_kernel_cache_flag_given_too_late_is_an_error_not_ignored(tmp_path, monkeypatch):
    """In-process, the kernels are imported already: the flag could not take effect."""
    from decision.cli import main

    monkeypatch.delenv(kernels.CACHE_ENV, raising=False)
    serve = ["serve", "--data-dir", str(tmp_path / "store"), "--catalog", str(TEST_CATALOG)]
    with pytest.raises(SystemExit, match="too late"):
        main([*serve, "--kernel-cache", str(tmp_path / "kc")])
    with pytest.raises(SystemExit, match="in full"):  # argparse would take an abbreviation
        main([*serve, "--kernel-c", str(tmp_path / "kc")])
    assert not (tmp_path / "store").exists()


def start_server(env: dict[str, str], data: Path, log: Path, *extra: str):
    """``decision serve`` on a free port: (process, seconds to 'serving on')."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "decision.cli", "serve", "--data-dir", str(data),
             "--catalog", str(TEST_CATALOG), "--address", "127.0.0.1:0", *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=env["HOME"])
    deadline = time.monotonic() + 280  # a cold compile on a busy machine is slow
    while "decision: serving on" not in log.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server not serving in time: {log.read_text()}")
        time.sleep(0.05)
    return proc, time.perf_counter() - started


@pytest.mark.needs_jit("about numba's cache of compiled kernels; its servers drop NUMBA_* "
                       "and compile whatever the pass, so here it would only repeat the JIT "
                       "pass (two cold compiles, ~75 s)")
def test_a_restarted_server_loads_every_kernel_from_the_cache_it_wrote(tmp_path):
    """--kernel-cache reaches numba before the kernels are imported, the first start
    fills the cache, the second compiles nothing (numba's cache log: 'data saved to' /
    'index saved to' only when it compiles) and starts much faster."""
    cache = Path(tempfile.mkdtemp(prefix="kc-", dir=tmp_path))
    env = clean_env(tmp_path, NUMBA_DEBUG_CACHE="1")
    cold, cold_s = start_server(env, tmp_path / "store", tmp_path / "cold.log",
                                "--kernel-cache", str(cache))
    stop_process(cold)
    cold_log = (tmp_path / "cold.log").read_text()
    assert "index saved to" in cold_log
    hashed = [p for p in cache.iterdir() if HASH_DIR.fullmatch(p.name)]
    assert len(hashed) == 1
    saved = {p.name.split(".")[0] for p in hashed[0].rglob("*.nbi")}
    assert {"decide", "eligibility", "scoring", "policies"} <= saved, saved
    assert not (tmp_path / "home/.cache").exists()  # nothing went to the default

    warm, warm_s = start_server(env, tmp_path / "store", tmp_path / "warm.log",
                                "--kernel-cache", str(cache))
    stop_process(warm)
    warm_log = (tmp_path / "warm.log").read_text()
    assert "data loaded from" in warm_log
    assert "saved to" not in warm_log, "the restart compiled something"
    assert str(hashed[0]) in warm_log
    assert warm_s < cold_s / 2, (cold_s, warm_s)
