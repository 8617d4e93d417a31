"""coincide.models.compiling: torch.compile with eager code as the fallback, and the `optim.compile`
setting ("auto" compiles on CUDA only)."""

from __future__ import annotations

import warnings

import pytest
import torch

from coincide.models.compiling import CompiledOrEager, compiles_on

torch.set_num_threads(1)


def scaled_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(3 * x, dim=-1).square().sum(-1)


def broken_backend(graph, example_inputs):
    raise RuntimeError("Cannot find a working triton installation")


def test_compiled_calls_match_eager_code() -> None:
    """A real compilation for the CPU (Inductor's C++ kernels)."""
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), requires_grad=True)
    step = CompiledOrEager(scaled_softmax, "the test function", dynamic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a machine without a C++ compiler falls back to eager
        out = step(x)
    out.sum().backward()
    compiled_grad = x.grad.clone()
    x.grad = None
    scaled_softmax(x).sum().backward()
    assert torch.allclose(out, scaled_softmax(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(compiled_grad, x.grad, rtol=1e-4, atol=1e-6)


def test_a_failing_compiler_warns_once_and_the_calls_run_eager() -> None:
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return scaled_softmax(x)

    step = CompiledOrEager(fn, "the training step", backend=broken_backend)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="torch.compile of the training step failed") as caught:
        out = step(x)
    assert len(caught) == 1 and "runs eager" in str(caught[0].message)
    assert "working triton" in str(caught[0].message)
    assert step.failed and torch.equal(out, scaled_softmax(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls run eager, quietly
        assert torch.equal(step(2 * x), scaled_softmax(2 * x))


def test_an_error_of_the_code_itself_is_raised_and_is_not_a_compile_failure() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 5:
            raise ValueError("expected 5 features")
        return x

    step = CompiledOrEager(fn, "the training step", backend=broken_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs eager" warning
        with pytest.raises(ValueError, match="expected 5 features"):
            step(torch.zeros(2, 4))
    assert not step.failed


def test_inside_a_compiled_region_the_outer_compilation_covers_the_function() -> None:
    inner = CompiledOrEager(scaled_softmax, "the clustering loss", backend=broken_backend)
    outer = torch.compile(lambda x: inner(x) + 1, backend="eager")
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken backend is never asked
        out = outer(x)
    assert torch.allclose(out, scaled_softmax(x) + 1)
    assert not inner.failed and inner._compiled is None


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", True),
        ("auto", "cpu", False),
        (True, "cpu", True),
        (True, "cuda", True),
        (False, "cuda", False),
    ],
)
def test_auto_compiles_on_cuda_only(setting, device, expected) -> None:
    assert compiles_on(setting, torch.device(device)) is expected
