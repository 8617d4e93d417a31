"""benchmarks/cluster_loss.py: runs on CPU at a small size, times every variant and finds the
one-softmax loss equal to the two-softmax reference."""

from __future__ import annotations

import torch

from bench_helpers import load_benchmark


def test_small_run_times_each_variant_and_agrees_with_the_reference(capsys) -> None:
    torch.set_num_threads(1)
    bench = load_benchmark("cluster_loss")
    args = ["--device", "cpu", "--batch", "8", "--clusters", "50", "--dim", "16", "--steps", "2"]
    assert bench.main([*args, "--no-compile"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {
        line[:34].strip(): line[34:].split() for line in lines[2:] if not line.startswith("logits")
    }
    assert set(rows) == {"two softmaxes, fp32 (reference)", "one softmax, eager, fp32", "head only"}
    ms, ratio, _, loss_err, grad_err = rows["one softmax, eager, fp32"]
    assert float(ms) > 0 and ratio.endswith("x")
    assert float(loss_err) < 1e-6 and float(grad_err) < 1e-4
    assert rows["two softmaxes, fp32 (reference)"][1] == "1.00x"


def test_two_softmax_reference_is_the_loss_of_the_package() -> None:
    bench = load_benchmark("cluster_loss")
    logits = torch.randn(6, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = bench.one_softmax_loss(False)(logits)
    assert torch.allclose(bench.two_softmax_loss(logits).double(), expected, rtol=1e-6)


def test_profile_lists_the_matrix_products(capsys) -> None:
    torch.set_num_threads(1)
    bench = load_benchmark("cluster_loss")
    args = ["--device", "cpu", "--batch", "8", "--clusters", "50", "--dim", "16", "--steps", "1"]
    assert bench.main([*args, "--no-compile", "--profile", "2"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("profile of 2 training steps") :]
    # The head's product and its two backward products: 3 per step.
    mm = next(line for line in table.splitlines() if line.strip().startswith("aten::mm"))
    assert mm.split()[-1] == "6"
