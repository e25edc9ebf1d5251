#!/usr/bin/env bash
# Installs vtkernels and what its tests need. torch is installed only when missing (CPU
# machines get 2.13.0, which pip finds locally); a GPU machine keeps its own CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -r requirements-dev.txt
python3 -m pip install -q --no-build-isolation -e .
