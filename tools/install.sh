#!/usr/bin/env bash
# Installs vtkernels and what its tests need. torch is installed only when missing (CPU
# machines get 2.13.0, which pip finds locally); a GPU machine keeps its own CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
# Offline (a GPU machine without internet) what is missing cannot be fetched: say so and go on, the
# main job needs only torch, triton and numpy; CI then fails at the tests if these matter.
python3 -m pip install -q -r requirements-dev.txt \
  || echo "warning: the test / peer requirements (requirements-dev.txt) were not all installed (offline?)"
python3 -m pip install -q --no-build-isolation -e .
