"""Numba-compiled hot path: plain functions over arrays, no I/O, no Python objects.

- ``kernels.eligibility``  channel/placement/validity checks and the rule VM
- ``kernels.policies``     contact policies over a customer's contact history
- ``kernels.scoring``      logistic propensity, P x V x L arbitration, feature reasons
- ``kernels.selection``    deterministic top-k
- ``kernels.decide``       the fused per-request kernel the engine calls (greedy, and
                           ``decide_explore`` for exploring policies), and the batch
                           kernels of campaigns (``prange`` over customers)
- ``kernels.explore``      exploration: each slot's draw and its logged probability
- ``kernels.bayes``        the learned models: Laplace updates of diagonal Gaussian
                           logistic posteriors, folding them for the decision kernels
- ``kernels.encoding``     a DecideResponse's wire bytes

Every kernel is compiled with ``cache=True`` (compiled once per machine, loaded from
disk afterwards) and has a NumPy reference its tests compare against.
``decision.core.engine.Engine.warm`` runs one real decision before a server reports
SERVING, so nothing compiles on the request path.

Numba keys a cached function by its own source file only: a kernel whose callee in
another module changed would load stale machine code. So the cache lives in a
directory named by a hash of every module here (unless ``NUMBA_CACHE_DIR`` says
otherwise): any change to any kernel starts a fresh cache.

Where that directory lives (``cache_dir`` below once imported; numba fixes a function's
cache directory when it decorates it, so all of this is read once, at import):

1. ``NUMBA_CACHE_DIR``, if the operator set it, wins and is used as is (no hash
   directory: whoever sets it owns keeping it fresh).
2. ``$DECISION_KERNEL_CACHE/numba-<hash>`` (``decision serve --kernel-cache DIR`` sets it).
3. ``$XDG_CACHE_HOME/decision/kernels/numba-<hash>``, by default
   ``~/.cache/decision/kernels/numba-<hash>``: outside the install, so a read-only
   install or a wheel compiles once per machine, not at every start.
4. If the chosen directory cannot be written, a warning and a private directory under
   the system temp dir, ``decision-kernels-<uid>`` (made 0700 and checked to be ours:
   numba unpickles what it finds there), or a fresh ``mkdtemp`` as a last resort. Never
   an error: at worst (``mkdtemp``) the kernels compile again at each start.

Processes that add to one cache at the same moment can corrupt it (two writers pick
the same overload file): the test session (conftest.py) and the supervisor of
``--workers N`` compile once before any other process starts, and the others only
read. Child processes resolve the same directory (they inherit the environment; a
``mkdtemp`` fallback is exported as ``DECISION_KERNEL_CACHE`` for them).
"""

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

import numba

CACHE_ENV = "DECISION_KERNEL_CACHE"
log = logging.getLogger(__name__)


def _source_hash() -> str:
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def _default_root() -> Path:
    """``$XDG_CACHE_HOME/decision/kernels``, else ``~/.cache/decision/kernels``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # spec: absolute only
    return base / "decision" / "kernels"


def _writable(path: Path) -> bool:
    """What numba itself checks before it uses a cache directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _private_temp_root() -> Path:
    """A per-user directory in the shared temp dir, reused across starts if it is ours
    alone; else a fresh one."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    root = Path(tempfile.gettempdir()) / f"decision-kernels-{uid if uid is not None else 'user'}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = root.lstat()
        if (stat.S_ISDIR(st.st_mode) and (uid is None or st.st_uid == uid)
                and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return root
    except OSError:
        pass
    fresh = Path(tempfile.mkdtemp(prefix="decision-kernels-"))
    os.environ[CACHE_ENV] = str(fresh)  # child processes share it instead of making their own
    return fresh


def _cache_dir() -> str:
    name = f"numba-{_source_hash()}"  # never stale machine code: see the docstring
    configured = os.environ.get(CACHE_ENV, "")
    try:
        root = Path(configured).expanduser().absolute() if configured else _default_root()
    except RuntimeError:  # no home directory for ~
        root = None
    if root is not None and _writable(root / name):
        return str(root / name)
    why = (f"{CACHE_ENV}={configured} is not writable" if configured
           else f"the default kernel cache {root} is not writable" if root is not None
           else "no home directory for the default kernel cache")
    try:
        fallback = _private_temp_root() / name
    except OSError as exc:  # no writable temp dir either: numba's own locators decide
        log.warning("%s, nor is the temp dir (%s)", why, exc)
        return str(root / name) if root is not None else ""
    log.warning("%s; compiled kernels go to %s instead (set %s to a writable directory "
                "to choose where)", why, fallback, CACHE_ENV)
    return str(fallback)


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = _cache_dir()
#: the directory numba caches the kernels in
cache_dir: str = numba.config.CACHE_DIR
