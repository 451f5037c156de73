"""The C kernels of ``kernels/cpu/*.c``: compiled into one library on first use, called by ctypes.

The sources are compiled with the system C compiler (``$CC``, default ``gcc``; ``-O3
-march=native -fopenmp``) into a per-user cache the first time a kernel is needed (about a
second) and reused while the sources, flags and CPU stay the same: no build step at install
time, no torch headers. The library links the OpenMP runtime torch has already loaded and is
given ``sparseconv.utils.threads.available_threads()`` threads per call (torch's setting,
fewer while other processes occupy the cores). Where no compiler is found :func:`available`
is False with the reason in :func:`unavailable_reason`, and callers use the torch code instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

SOURCES = sorted(Path(__file__).with_name("cpu").glob("*.c"))
HEADERS = sorted(Path(__file__).with_name("cpu").glob("*.h"))
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]


def _flags() -> list[str]:
    """FLAGS plus ``$SPARSECONV_CFLAGS`` (e.g. ``-mno-avx512f`` to build the AVX2 kernels)."""
    return [*FLAGS, *os.environ.get("SPARSECONV_CFLAGS", "").split()]


_I64, _PTR, _INT, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
# argument types of every exported function (all return an int status)
SIGNATURES = {
    "sc_implicit_gemm": [_PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _I64, _PTR,
                         _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _INT, _INT],
    "sc_max_panel": [],
    "sc_amx_ready": [],
    "sc_implicit_gemm_bf16": [_PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR, _I64, _I64, _PTR,
                              _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _INT, _INT, _INT, _INT],
    "sc_tile_plan_count": [_PTR, _I64, _I64, _I64, _I64, _PTR, _INT],
    "sc_tile_plan_fill": [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _INT],
    "sc_weight_grad_bf16": [_PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR,
                            _I64, _INT],
    "sc_weight_grad": [_PTR, _I64, _I64, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR,
                       _I64, _INT],
    "sc_search_sorted": [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _INT],
    "sc_search_sorted_mirrored": [_PTR, _PTR, _I64, _PTR, _I64, _PTR, _INT],
    "sc_hash_build": [_PTR, _I64, _PTR, _PTR, _I64, _INT],
    "sc_search_hash": [_PTR, _PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _INT],
    "sc_mirror": [_PTR, _I64, _I64, _INT],
    "sc_transpose_nbmap": [_PTR, _I64, _I64, _PTR, _I64, _INT],
    "sc_csr_count": [_PTR, _I64, _I64, _PTR, _INT],
    "sc_csr_fill": [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _INT],
    "sc_downsample_sorted": [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _INT],
    "sc_downsample_outputs": [_PTR, _PTR, _I64, _PTR, _PTR, _PTR],
    "sc_pack_keys": [_PTR, _I64, _PTR, _INT],
    "sc_is_sorted": [_PTR, _I64],
    "sc_unpack_keys": [_PTR, _I64, _PTR, _INT],
    "sc_select_cells": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _F64,
                        _F64, _PTR, _PTR, _PTR],
    "sc_gather_concat": [_PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _INT],
    "sc_scatter_cells": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64,
                         _INT],
}  # fmt: skip

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where built kernels live: ``$SPARSECONV_CACHE`` or ``~/.cache/sparseconv``."""
    root = os.environ.get("SPARSECONV_CACHE") or Path.home() / ".cache" / "sparseconv"
    return Path(root) / "cpu_kernels"


def _cpu_fingerprint() -> str:
    """The CPU's feature flags: a library built with -march=native only runs where they hold."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return flags + platform.machine()


def fallback_dir() -> Path:
    """A private folder under the system temp dir, used when the cache cannot be used."""
    return Path(tempfile.gettempdir()) / f"sparseconv-{os.getuid()}" / "cpu_kernels"


def _trusted(folder: Path) -> bool:
    """Loading a library runs its code: only from a folder that this user owns and that no one
    else can write (as ssh treats its keys)."""
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _library_name(cc: str) -> str:
    digest = hashlib.sha256(" ".join([cc, *_flags(), _cpu_fingerprint()]).encode())
    for source in [*SOURCES, *HEADERS]:
        digest.update(source.name.encode() + source.read_bytes())
    return f"sparseconv_cpu_{digest.hexdigest()[:16]}.so"


def _compile(cc: str, lib_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
        out = Path(tmp) / lib_path.name
        done = subprocess.run(
            [cc, *_flags(), *map(str, SOURCES), "-o", str(out)], capture_output=True, text=True
        )
        if done.returncode != 0:
            names = ", ".join(s.name for s in SOURCES)
            raise RuntimeError(f"{cc} failed to build {names}:\n{done.stderr[-2000:]}")
        os.replace(out, lib_path)  # atomic: concurrent builders never see half a file


def _load_from(folder: Path, cc: str) -> ctypes.CDLL:
    """Build into ``folder`` if needed and load; a cached file that does not load (truncated,
    corrupted) is rebuilt once."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _trusted(folder):
        raise OSError(f"{folder} is writable by other users or not owned by this user")
    lib_path = folder / _library_name(cc)
    if not lib_path.exists():
        _compile(cc, lib_path)
    try:
        return ctypes.CDLL(str(lib_path))
    except OSError:
        _compile(cc, lib_path)
        return ctypes.CDLL(str(lib_path))


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: {cc!r} not found (set $CC)")
    problems = []
    for folder in (cache_dir(), fallback_dir()):
        try:
            lib = _load_from(folder, cc)
            break
        except OSError as err:  # read-only or untrusted cache, corrupted file: try the next
            problems.append(f"{folder}: {err}")
    else:
        raise RuntimeError("no usable kernel cache: " + "; ".join(problems))
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library (built now if needed), or None when it cannot be built."""
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build()
            except (RuntimeError, OSError) as err:
                _state["lib"] = None
                _state["reason"] = str(err)
                warnings.warn(
                    f"sparseconv: the C kernels are unavailable ({err}); convolutions and maps "
                    "use the slower torch code",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the C kernels are built (building them now if needed)."""
    return library() is not None


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    return "" if available() else str(_state.get("reason", ""))


def lib() -> ctypes.CDLL:
    """The library, or RuntimeError with the reason it could not be built."""
    loaded = library()
    if loaded is None:
        raise RuntimeError(f"the CPU kernels could not be built: {unavailable_reason()}")
    return loaded
