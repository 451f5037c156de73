#!/usr/bin/env bash
# Creates .venv with everything sparseconv needs, on a fresh machine.
# torch is pinned to the CPU build first so that no CUDA build is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# Open3D's wheel links against libusb-1.0 (a system library, not on PyPI).
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing libusb-1.0-0 (needed by Open3D)"
    apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "[setup] ERROR: Open3D needs the system library libusb-1.0-0." >&2
    echo "[setup]        install it as root (Debian/Ubuntu: apt-get install libusb-1.0-0) and rerun." >&2
    exit 1
  fi
fi

# The fused CPU conv kernels (kernels/cpu/*.c) are compiled with the system C compiler on first
# use; without one sparseconv still works, on the slower torch dataflow.
if ! command -v "${CC:-gcc}" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing gcc (builds the fused CPU conv kernels)"
    apt-get update -qq && apt-get install -y -qq gcc libgomp1 >/dev/null
  else
    echo "[setup] WARNING: no C compiler (${CC:-gcc}); the cpu_implicit_gemm dataflow will be off." >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -z "${SPARSECONV_TORCH:-}" ]; then
  # The CPU wheel of torch 2.13.0 lies on this machine kind's disk; elsewhere pip fetches it.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q torch
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]"
touch "$VENV/.sparseconv-installed"
echo "[setup] environment ready in $VENV"
