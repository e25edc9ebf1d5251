#!/usr/bin/env bash
# Downloads the pure-Python peers the benchmarks compare against (Liger-Kernel, Inf-CL) as
# wheels into .whl/ (git-ignored, never committed) for a GPU machine without internet: carry
# .whl with the device call; tools/gpu_check.sh installs them into /tmp/vtk_site.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  liger-kernel==0.8.5 inf-cl==1.2.1
ls -la .whl
