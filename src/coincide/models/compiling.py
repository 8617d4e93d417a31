"""torch.compile with the eager code as the fallback, for the parts of training that compile."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def compiles_on(setting: str | bool, device: torch.device) -> bool:
    """Whether `optim.compile` (true, false or "auto") compiles on `device`.

    "auto" compiles on CUDA only: there it is measured (1.43x the joint step's pairs/s at the
    paper's configuration on an H200, benchmarks/README.md); on the CPU, Inductor's C++ kernels
    take minutes to build for a training step, and compiling the test suite's tiny model ended
    in heap corruption during its first backward pass (torch 2.14.1).
    """
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


class CompiledOrEager:
    """Calls `torch.compile(fn, **options)`; if a call fails there and `fn` itself succeeds on
    the same arguments, warns once and calls `fn` from then on.

    Compiling happens at the first call (and again for new input shapes), and can fail for
    reasons that have nothing to do with the run: no Triton for the GPU, no C++ compiler for
    the CPU, an operation the compiler does not support. The numbers are the same either way,
    only slower, so a run keeps going. An error that eager code raises too (out of memory, a
    bad input) is raised as eager code raises it.

    `what` names the compiled thing in the warning ("the training step"). torch.compile is
    called at the first call, not here. The backward pass of a compiled function is compiled
    during the first `backward()`, outside this call: a failure there is not caught (one that
    comes from the platform, such as missing Triton, already fails the forward compile).
    """

    def __init__(self, fn: Callable[..., Any], what: str, **options: Any) -> None:
        self.fn = fn
        self.what = what
        self.options = options
        self.failed = False
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed or torch.compiler.is_compiling():
            # Inside a compiled region (the compiled training step calls the compiled
            # clustering loss) the outer compilation already covers `fn`.
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, **self.options)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - judged by whether eager code fails too
            result = self.fn(*args, **kwargs)
            warnings.warn(
                f"torch.compile of {self.what} failed ({_root_cause(err)}); it runs eager "
                "(slower, same numbers).",
                stacklevel=2,
            )
            self.failed = True
            return result


def _root_cause(err: BaseException) -> str:
    """The first line of the innermost exception of a chain: the compiler wraps the reason (no
    Triton, no C++ compiler) in exceptions that only name the backend."""
    # TorchDynamo keeps the reason as `inner_exception` (raised `from None`).
    while (inner := getattr(err, "inner_exception", None) or err.__cause__) is not None:
        err = inner
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
