"""The benchmark suite's plumbing on the CPU: every case enumerates, records are written as they
are measured, a time budget stops the run cleanly. (The timings themselves need a GPU.)"""

import json
import os
import re
import sys
import time
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness, targets  # noqa: E402
from benchmarks.run import backend_order, discover  # noqa: E402

MODES = {"fwd", "bwd", "fwd+bwd", "train"}
ENV = {**harness.environment(), "gpu": "test GPU"}
CEILINGS = {"copy_bytes_per_s": 1e12, "matmul_flops_per_s": 1e15}


@pytest.mark.parametrize("quick", [False, True])
def test_every_case_enumerates_and_has_its_baseline(quick):
    cases = [case for _, module in discover(None) for case in module.cases(quick=quick)]
    assert {case.op for case in cases} >= {"layer_norm", "attention", "window_attention", "patch_embed",
                                            "clip_loss"}
    keys = {(c.op, c.shape, c.mode, c.provider) for c in cases}
    assert len(keys) == len(cases), "two cases share op, shape, mode and provider"
    for case in cases:
        assert case.mode in MODES and callable(case.make)
        if case.baseline.startswith(harness.BEST):  # the fastest provider of a family: one must exist
            prefix = case.baseline[len(harness.BEST):]
            assert any(k[:3] == (case.op, case.shape, case.mode) and k[3].startswith(prefix) for k in keys), case
        else:
            assert (case.op, case.shape, case.mode, case.baseline) in keys, f"no baseline for {case}"
        assert case.bytes or case.flops or case.op.startswith(("vit", "clip", "swin", "igpt", "detr")), case


def _case(provider, fail=False):
    def make():
        if fail:
            raise RuntimeError("peer not importable")
        return lambda: None
    return harness.BenchCase("op", "S", "fwd", provider, make, bytes=1e9)


def _fake_time(monkeypatch, seconds_per_case=0.0):
    """Every case takes 2 ms on the fake GPU and ``seconds_per_case`` on the harness's clock."""
    clock = [0.0]

    def time_ms(fn, grad_to_none=None):
        fn()
        clock[0] += seconds_per_case
        return 2.0, 1.9, 2.1
    monkeypatch.setattr(harness, "time_ms", time_ms)
    monkeypatch.setattr(harness, "host_ms", lambda fn, grad_to_none=None: 0.5)
    monkeypatch.setattr(harness, "queued_ms", lambda fn, host, grad_to_none=None: 0.4)
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))


@pytest.mark.parametrize("call_ms, calls, expected", [
    (2.0, 2, (1.0, 0.9, 1.1)),  # fast: do_bench after the warm-up and one timed call
    (800.0, 4, (800.0, 800.0, 800.0)),  # slow: three timed calls
    (9000.0, 2, (9000.0, 9000.0, 9000.0)),  # very slow: the one timed call
])
def test_slow_calls_are_timed_a_few_times_not_by_do_bench(monkeypatch, call_ms, calls, expected):
    import triton.testing

    made = []

    def timed_calls_ms(fn, grad_to_none, n):
        made.extend([call_ms] * n)
        return [call_ms] * n
    monkeypatch.setattr(harness, "timed_calls_ms", timed_calls_ms)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kwargs: [1.0, 0.9, 1.1])
    assert harness.time_ms(lambda: None) == expected
    assert len(made) == calls


@pytest.mark.gpu
def test_queued_ms_leaves_out_host_time():
    x = torch.randn(1024, device="cuda")

    def host_bound():
        time.sleep(2e-3)  # 2 ms of host work before a kernel of a few microseconds
        x.add_(1)
    host = harness.host_ms(host_bound)
    assert host > 1.5
    assert harness.queued_ms(host_bound, host) < 0.5  # do_bench's median would be ~2 ms


def test_records_ratios_errors_and_log(tmp_path, monkeypatch):
    _fake_time(monkeypatch)
    log = tmp_path / "records.jsonl"
    records = harness.run_cases([_case("torch"), _case("ours"), _case("peer", fail=True)], CEILINGS, ENV,
                                log_path=str(log))
    by_provider = {r.provider: r for r in records}
    assert by_provider["ours"].median == 2.0 and by_provider["ours"].ratio_vs_baseline == 1.0
    assert by_provider["ours"].tbps == pytest.approx(0.5) and by_provider["ours"].pct_of_floor == pytest.approx(50)
    assert by_provider["ours"].extra["host_ms"] == 0.5 and by_provider["ours"].extra["queued_ms"] == 0.4
    assert by_provider["peer"].median is None and "peer not importable" in by_provider["peer"].error
    assert [json.loads(line)["provider"] for line in log.read_text().splitlines()] == ["torch", "ours", "peer"]
    harness.write_results(records, CEILINGS, ENV, str(tmp_path))
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 3
    assert "ours" in (tmp_path / "results.md").read_text()
    assert "## Issue targets (test GPU" in (tmp_path / "results.md").read_text()


def test_best_of_a_family_as_baseline():
    def record(provider, median):
        return harness.Record("attention", provider, "fwd", "S", "bf16", "ms", median, None, None,
                              baseline="best:sdpa-")
    records = [record("sdpa-flash", 2.0), record("sdpa-cudnn", 1.0), record("ours", 0.8), record("flex", 0.5)]
    harness._fill_ratios(records)
    assert [r.ratio_vs_baseline for r in records] == [0.5, 1.0, 1.25, 2.0]


def test_an_interrupted_run_keeps_its_records(tmp_path, monkeypatch):
    _fake_time(monkeypatch)

    def interrupted():
        raise KeyboardInterrupt  # as the SIGTERM handler of benchmarks/run.py raises it

    cases = [_case("torch"), _case("ours"), harness.BenchCase("op", "S", "fwd", "late", lambda: interrupted)]
    log = tmp_path / "records.jsonl"
    with pytest.raises(KeyboardInterrupt):
        harness.run_cases(cases, CEILINGS, ENV, log_path=str(log))
    records = harness.read_records(str(log))
    assert [r.provider for r in records] == ["torch", "ours"] and records[1].ratio_vs_baseline == 1.0


def test_case_inputs_are_released_and_a_dead_gpu_stops_the_run(monkeypatch):
    _fake_time(monkeypatch)
    holders = [[torch.zeros(1)] for _ in range(3)]
    cases = [harness.BenchCase("op", "S", "fwd", f"p{i}", lambda: (lambda: None), bytes=1.0,
                               grad_to_none=lambda holder=holder: holder) for i, holder in enumerate(holders)]
    usable = iter([True, False, True])
    monkeypatch.setattr(harness, "gpu_usable", lambda: next(usable))
    records = harness.run_cases(cases, CEILINGS, ENV)
    assert [r.provider for r in records] == ["p0", "p1"]  # p1 left the GPU unusable: p2 never starts
    assert holders[0] == [] and holders[1] == [] and len(holders[2]) == 1


def test_time_budget_stops_before_the_next_case(monkeypatch):
    _fake_time(monkeypatch, seconds_per_case=6.0)
    records = harness.run_cases([_case(f"p{i}") for i in range(4)], CEILINGS, ENV, budget_s=10)
    assert [r.provider for r in records] == ["p0", "p1"]  # 12 s spent after two cases


def test_backend_order_ranks_by_geometric_mean():
    def record(provider, shape, median):
        return harness.Record("op", provider, "fwd", shape, "bf16", "ms", median, None, None)
    records = [record("vtkernels-triton", "a", 1.0), record("vtkernels-triton", "b", 4.0),
               record("vtkernels-cuda", "a", 2.0), record("vtkernels-cuda", "b", 1.0),
               record("torch", "a", 0.1)]
    assert backend_order(records) == {"op": ["cuda", "triton"]}


def test_measured_order_can_keep_the_reference_on_the_gpu():
    """The MLP's unfused cuBLAS path is its reference; where it measures fastest, auto dispatch on
    CUDA tensors picks it (no GPU needed: dispatch looks at the device type only)."""
    from vtkernels.backend import OpDispatcher

    records = [harness.Record("mlp", provider, "fwd", "a", "bf16", "ms", median, None, None)
               for provider, median in (("vtkernels-triton", 2.0), ("vtkernels-reference", 1.0),
                                        ("vtkernels-cuda", 3.0), ("torch.compile", 0.5))]
    order = backend_order(records)
    assert order == {"mlp": ["reference", "triton", "cuda"]}
    dispatcher = OpDispatcher("mlp-measured", gpu_preference=order["mlp"])
    assert dispatcher.choose(torch.device("cuda")) == "reference"


def test_kernel_profile_tables_and_kinds():
    """benchmarks/kernel_profile.py on the CPU (CPU op events stand in for kernels): per-call
    times and counts, shares summing to 1, largest first; kernel names mapped to who wrote them."""
    from benchmarks import kernel_profile

    a, b = torch.randn(64, 64), torch.randn(64, 64)
    rows = kernel_profile.profile(lambda: (a @ b).relu().sum(), calls=3, device="cpu")
    names = [row["kernel"] for row in rows]
    assert "aten::mm" in names and all(row["us_per_call"] > 0 for row in rows)
    assert next(row for row in rows if row["kernel"] == "aten::mm")["launches_per_call"] == 1
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    assert [row["us_per_call"] for row in rows] == sorted((row["us_per_call"] for row in rows), reverse=True)
    assert kernel_profile.kernel_kind("attention_fwd_kernel") == "vtkernels-triton"
    assert kernel_profile.kernel_kind("void vtk::attention::fwd_kernel<__nv_bfloat16, 64>(...)") == "vtkernels-cuda"
    assert kernel_profile.kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "library"
    assert kernel_profile.kernel_kind("void at::native::vectorized_elementwise_kernel<4, ...>") == "pytorch"
    text = kernel_profile.markdown([{"case": "op S fwd p", "kernels": rows}, {"case": "x", "error": "E: no"}], top=2)
    assert "## op S fwd p" in text and text.count("| `") == 2 and "failed: E: no" in text


def test_kernel_profile_plain_runs_each_call_once():
    """--plain (for ncu from outside, which picks launches by their count): exactly ``calls`` runs,
    no warm-up."""
    from benchmarks import kernel_profile

    runs = []
    kernel_profile.run_plain(lambda: runs.append(1), calls=3)
    assert len(runs) == 3


@pytest.mark.parametrize("shift", [0, 3])
def test_window_attention_peers_compute_the_reference(shift):
    """The timm-style and SDPA peers (given timm's buffers, on CPU tensors) compute what the op
    computes: their ratios compare equal work."""
    from benchmarks.ops import window_attention as bench
    from vtkernels.reference import window_attention as ref

    batch, size, channels, heads, window = 2, 14, 64, 2, 7
    qkv = torch.randn(batch, size, size, 3 * channels)
    table = torch.randn((2 * window - 1) ** 2, heads)
    buffers = (ref.relative_position_index(window), ref.shift_mask(size, size, window, shift) if shift else None)
    expected = ref.window_attention(qkv.double(), table.double(), heads, window, shift).float()
    for peer in (bench._timm_style, bench._sdpa):
        torch.testing.assert_close(peer(qkv, table, heads, window, shift, buffers), expected, atol=1e-5, rtol=1e-5)


def test_dynamo_is_reset_between_shapes_not_within_one(monkeypatch):
    """Compiled peers recompile per shape; past Dynamo's recompile limit they would run eager. The
    harness resets Dynamo when the shape changes, so the cases of one shape share their compiles."""
    _fake_time(monkeypatch)
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(len(resets)))
    cases = [harness.BenchCase("op", shape, mode, "p", lambda: (lambda: None), bytes=1.0)
             for shape, mode in (("S1", "fwd"), ("S1", "fwd+bwd"), ("S2", "fwd"))]
    records = harness.run_cases(cases, CEILINGS, ENV)
    assert len(records) == 3 and len(resets) == 2  # after S1's last case and after S2's


# --- the issues' targets ---------------------------------------------------------------------------

OPTIONAL_PEERS = {"liger", "inf-cl"}  # present only when their wheels are carried to the GPU machine


def test_every_target_names_existing_cases_and_providers():
    """A renamed case or provider would leave a target silently unmeasured."""
    cases = [case for _, module in discover(None) for case in module.cases(quick=False)]
    providers = {(c.op, c.mode, c.shape): set() for c in cases}
    for c in cases:
        providers[(c.op, c.mode, c.shape)].add(c.provider)
    for target in targets.TARGETS:
        matched = [key for key in providers if key[:2] == (target.op, target.mode)
                   and re.search(target.shape, key[2])]
        assert matched, target.claim
        for key in matched:
            names = providers[key]
            assert any(targets._matches(p, target.ours) for p in names), (target.claim, key)
            for peer in target.peer:
                assert peer in OPTIONAL_PEERS or any(targets._matches(p, [peer]) for p in names), (target.claim, peer)


def _record(op, shape, mode, provider, median, **fields):
    return {"op": op, "shape": shape, "mode": mode, "provider": provider, "median": median, "error": "",
            "extra": {}, **fields}


def test_targets_take_our_fastest_and_the_peer_family_best():
    records = [_record("attention", "ViT-B/16 256x12x197x64", "fwd", provider, median) for provider, median in
               (("vtkernels-triton", 1.0), ("vtkernels-cuda", 0.8), ("sdpa-flash", 1.2), ("sdpa-cudnn", 0.9),
                ("flex", 0.5))]
    rows = [r for r in targets.evaluate(records) if r["target"].op == "attention" and r["target"].mode == "fwd"]
    general, short = rows
    assert general["ours"] == "vtkernels-cuda" and general["measured"] == "1.12x sdpa-cudnn" and general["met"]
    assert short["met"] is False  # 1.12x < 1.2x at N <= 257 (FlexAttention is no SDPA backend)
    clip_loss = [_record("clip_loss", "n=65536 d=768", "fwd+bwd", "vtkernels-triton", 39.0,
                         extra={"memory": {"peak_extra_bytes": 1.5e9}}),
                 _record("clip_loss", "n=65536 d=768", "fwd+bwd", "torch.compile", 50.0)]
    verdicts = {r["target"].claim: (r["measured"], r["met"]) for r in targets.evaluate(clip_loss)
                if r["target"].op == "clip_loss" and r["shape"]}
    assert verdicts["n=65536 fwd+bwd <= 40 ms (H100)"] == ("39 ms", True)
    assert verdicts["n=65536 fwd+bwd <= 1 GB extra memory"] == ("1.50 GB", False)
    assert verdicts["n=65536 >= 1.5x torch.compile"] == ("1.28x torch.compile", False)
    assert verdicts["n=65536 >= 40x Inf-CL"] == ("peer not measured", None)
    failed = targets.evaluate([_record("detr", "DETR-R50 8x3x800x1066", "fwd", "vtkernels", None, error="OOM")])
    detr = next(r for r in failed if r["target"].op == "detr")
    assert detr["met"] is False and "OOM" in detr["measured"]  # our failure misses the target
    memory = [_record("clip_loss", "n=65536 d=768", "fwd+bwd", provider, 30.0, pct_of_floor=pct,
                      extra={"memory": {"peak_extra_bytes": peak}})
              for provider, peak, pct in (("vtkernels-cuda", 0.5e9, 85.0), ("torch.compile", 17.5e9, 40.0))]
    verdicts = {r["target"].claim: (r["measured"], r["met"]) for r in targets.evaluate(memory)
                if r["target"].op == "clip_loss" and r["shape"]}
    assert verdicts["n=65536 >= 17x less extra memory than torch.compile"] == ("35.0x less than torch.compile", True)
    assert verdicts["n >= 32k at >= 80% of the bf16 matmul ceiling"] == ("85% of the floor", True)
    assert verdicts["n=65536 less extra memory than Inf-CL"] == ("memory not measured", None)
    table = targets.markdown(records, "test GPU")
    assert "| #3 | attention fwd >= 1.0x the best SDPA backend | ViT-B/16 256x12x197x64 |" in table
    assert "not measured" in table  # every other target: no case in this run


def test_targets_also_judge_the_gpu_time_alone():
    """The queued column uses queued_ms for ours and the peer (each family's fastest by it), rates
    scaled; the verdict stays on the medians."""
    shape = "ViT-B 256x197x768"
    records = [_record("layer_norm", shape, "fwd", "vtkernels-triton", 0.125, tbps=1.24, extra={"queued_ms": 0.043}),
               _record("layer_norm", shape, "fwd", "torch", 0.106, extra={"queued_ms": 0.108}),
               _record("layer_norm", shape, "fwd", "torch.compile", 0.042)]  # no queued time: that peer is absent
    rows = {r["target"].claim: r for r in targets.evaluate(records) if r["target"].op == "layer_norm" and r["shape"]}
    bandwidth = rows["layer_norm fwd >= 2.8 TB/s (H100)"]
    assert bandwidth["met"] is False and bandwidth["queued"] == "3.60 TB/s (met)"
    eager = rows["layer_norm fwd >= 1.7x eager"]
    assert eager["met"] is False and eager["queued"] == "2.51x torch (met)"
    assert rows["layer_norm fwd >= torch.compile"]["queued"] == "peer not measured (not measured)"
    memory = [_record("clip_loss", "n=65536 d=768", "fwd+bwd", "vtkernels-triton", 30.0,
                      extra={"queued_ms": 29.0, "memory": {"peak_extra_bytes": 0.5e9}})]
    by_claim = {r["target"].claim: r for r in targets.evaluate(memory) if r["shape"]}
    assert by_claim["n=65536 fwd+bwd <= 1 GB extra memory"]["queued"] == ""  # not a time target
    assert by_claim["n=65536 fwd+bwd <= 40 ms (H100)"]["queued"] == "29 ms (met)"
    assert "| 3.60 TB/s (met) |" in targets.markdown(records, "test GPU")


def test_a_failing_host_or_queued_timing_keeps_the_median(monkeypatch):
    _fake_time(monkeypatch)

    def out_of_memory(fn, host, grad_to_none=None):
        raise torch.cuda.OutOfMemoryError("flush buffer")
    monkeypatch.setattr(harness, "queued_ms", out_of_memory)
    (record,) = harness.run_cases([_case("ours")], CEILINGS, ENV)
    assert record.median == 2.0 and not record.error
    assert "queued_ms" not in record.extra and "OutOfMemoryError" in record.extra["timing_note"]
