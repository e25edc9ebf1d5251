#!/usr/bin/env bash
# Command one: install, then run the main job. On a GPU machine that is the benchmark suite
# (results under benchmarks/results/); without a GPU, a correctness self-check of every op's
# Triton kernels against the reference under the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/install.sh
python3 -m vtkernels main "$@"
