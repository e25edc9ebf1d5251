"""The suite through pytest-benchmark: `pytest benchmarks/ --benchmark-only` (GPU only).

Gives pytest-benchmark's JSON and --benchmark-compare regression tracking; the published
figures come from benchmarks/run.py (triton.testing.do_bench)."""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA GPU", allow_module_level=True)

from benchmarks.run import discover  # noqa: E402

CASES = [case for _, module in discover(None) for case in module.cases(quick=True)]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.shape}-{c.mode}-{c.provider}" for c in CASES])
def test_bench(benchmark, case):
    fn = case.make()

    def synchronized():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronized, warmup_rounds=5, rounds=30, iterations=1)
