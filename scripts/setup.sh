#!/usr/bin/env bash
# Set up everything prunekit's demo and tests need, once: a virtual environment in
# .venv with prunekit installed (editable) plus its test extras, and the Debian
# Fashion-MNIST package where apt is available and the files are missing.
# Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
STAMP=.venv/.prunekit-installed

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/constraints.txt -nt "$STAMP" ]; then
  echo "setup: installing prunekit and its test extras into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import prunekit, torch" # fail loudly if the install did not work
  touch "$STAMP"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "setup: installing dataset-fashion-mnist with apt-get"
    { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { $SUDO apt-get update -q >/dev/null 2>&1 &&
        $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } ||
      echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST runs need --data-dir"
  fi
fi
