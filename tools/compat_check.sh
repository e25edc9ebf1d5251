#!/usr/bin/env bash
# The test suite on the CPU under the GPU machine's versions (python 3.12, torch 2.11 cu130,
# triton 3.6, transformers 5.17, timm), so that a GPU session does not spend its minutes on a
# version difference (HF module layouts, torch APIs):
#   bash tools/compat_check.sh [VENV_DIR] [pytest args...]     (default VENV_DIR /tmp/vtk_compat)
# Builds the virtual environment once (pip finds these versions where it can reach PyPI; torch's
# CUDA wheel runs on the CPU here), then runs the suite from this checkout with PYTHONPATH (pure
# Python: the extension is not built). Versions: the *_VERSION variables below, or the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/vtk_compat}
shift || true
python_312() {  # COMPAT_PYTHON, else a python 3.12 that runs (pyenv's shims may not), else python3 (said)
  local candidate
  for candidate in "${COMPAT_PYTHON:-}" python3.12 $(pyenv root 2>/dev/null)/versions/3.12*/bin/python3; do
    [[ -n "$candidate" ]] && "$candidate" --version >/dev/null 2>&1 && { echo "$candidate"; return; }
  done
  echo "compat_check: no python 3.12 found, using python3 (the GPU machine has 3.12)" >&2
  echo python3
}
PYTHON=$(python_312)
TORCH_VERSION=${TORCH_VERSION:-2.11.0} TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.26.0}
TRITON_VERSION=${TRITON_VERSION:-3.6.0} TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.17.0}
TIMM_VERSION=${TIMM_VERSION:-1.0.31}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=  # (a machine-wide torch cap would refuse 2.11)

if [[ ! -f "$VENV/.installed" ]]; then  # (a venv left half-installed by a failed pip run is rebuilt)
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" "numpy<2.4" scipy pillow pytest pytest-xdist pytest-benchmark
  # timm needs torchvision, whose dependency pin would replace torch: both without dependencies
  # (its other needs: huggingface_hub, safetensors, pyyaml, come with transformers)
  "$VENV/bin/pip" install -q --no-deps "torchvision==$TORCHVISION_VERSION" "timm==$TIMM_VERSION"
  touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import sys, torch, triton, transformers, timm; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
PYTHONPATH="$PWD" "$VENV/bin/python" -m pytest tests -q -n "${COMPAT_WORKERS:-2}" -p no:cacheprovider "$@"
