"""`coincide train ... --nproc N`: N training processes on this machine, without torchrun.

The launcher is torch's elastic agent (`torch.distributed.launcher.api.elastic_launch`), the
code behind torchrun and `accelerate launch`, run in this process: it starts N workers with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set by a local rendezvous (as
`torchrun --standalone` does), and each worker calls the same stage function one process would
(`coincide.dist.setup` joins the group: NCCL on GPUs, gloo on the CPU). A user error in a worker
(a bad store, a batch that does not split over N) comes back to this process and ends in one
sentence, once, as in a single process.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from coincide.errors import UserError

# Seconds between the agent's looks at its workers (torchrun's default is 0.1 s).
MONITOR_INTERVAL_S = 0.5


def _worker(target: str, args: tuple[Any, ...], errors: str, threads: int) -> None:
    """One process of the group: call `module:function` with args; a UserError is written to
    `errors/rank<R>.txt` for the launcher to print, and the process exits with code 2."""
    import torch

    torch.set_num_threads(threads)
    module, _, name = target.partition(":")
    try:
        getattr(importlib.import_module(module), name)(*args)
    except UserError as err:
        Path(errors, f"rank{os.environ.get('RANK', '0')}.txt").write_text(str(err), "utf-8")
        sys.exit(2)


def launch(nproc: int, target: str, *args: Any) -> None:
    """Run `target` ("module:function") with `args` in `nproc` processes on this machine and
    wait for them; UserError when a process stops on a user error (its sentence)."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: give a number of processes >= 1.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--nproc starts its own processes; leave it out under torchrun.")
    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise UserError(
            f"--nproc {nproc} asks for more processes than the {gpus} visible GPU(s); "
            f"use --nproc {gpus} (one process per GPU)."
        )
    threads = max(1, (os.cpu_count() or 1) // nproc)  # N processes share the cores
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"coincide-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=MONITOR_INTERVAL_S,
        start_method="spawn",
    )
    # The agent logs a failed worker with its traceback at ERROR level; failures are reported
    # below instead (a user error as its sentence, anything else as the ChildFailedError).
    logging.disable(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="coincide-launch-") as errors:
        try:
            elastic_launch(config, _worker)(target, args, errors, threads)
        except SignalException as err:
            raise KeyboardInterrupt from err
        except ChildFailedError:
            messages = sorted(Path(errors).glob("rank*.txt"))
            if not messages:
                raise
            raise UserError(messages[0].read_text("utf-8")) from None
        finally:
            logging.disable(logging.NOTSET)
