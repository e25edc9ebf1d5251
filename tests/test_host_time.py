"""tools/host_time.py (host time per call with the Triton launches stubbed out) runs every case,
in its own process: it replaces the kernels of the vtkernels.triton modules it imports."""

import os
import subprocess
import sys

import pytest
import torch

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "host_time.py")


def test_host_time_runs_every_case_with_tma_descriptors():
    done = subprocess.run([sys.executable, TOOL, "--calls", "2", "--tma"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Triton kernels stubbed" in lines[0]
    timed = [line.split() for line in lines[1:-1]]
    assert len(timed) == 15 and all(fields[-1] == "us" and float(fields[-2]) > 0 for fields in timed)
    assert lines[-1].startswith("TMA descriptors built:") and int(lines[-1].split()[-1]) > 0  # --tma took effect


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real CUDA backend (as test_cuda_emulator.py)")
def test_host_time_runs_every_case_on_the_emulated_cuda_backend():
    done = subprocess.run([sys.executable, TOOL, "--calls", "2", "--backend", "cuda"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "CUDA backend emulated" in lines[0]
    timed = [line.split() for line in lines[1:]]
    assert len(timed) == 15 and all(fields[-1] == "us" and float(fields[-2]) > 0 for fields in timed)
