"""Training on several processes through torch.distributed: ranks, the process group, launching.

Every rank takes its share of every batch (`split_batch`), so the batches, their order and the
update are those of one process whatever the world size; `DistributedDataParallel` sums the
shares' gradients while the backward pass runs. The process group comes from the environment
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): gloo for
CPU tensors, NCCL for CUDA ones. `launch` is how `nmt-train train.processes=N` starts itself on one
machine: torch's own elastic launcher, the engine of `torchrun --standalone`.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2)
LOST_PEER_EXIT = 3  # the exit status of a rank that stopped because another one was lost
LAUNCHED_BY_NMT = "NMT_LAUNCHED"  # set in the environment of the processes `launch` starts


class LaunchError(RuntimeError):
    """A training process failed or died; the message names its rank and the cause."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> Ranks:
        """The ranks torchrun (or any launcher of torch.distributed) set; one process otherwise."""
        env = os.environ
        world_size = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=world_size,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world_size))),
        )


def under_launcher() -> bool:
    """Whether this process was started by torchrun or `launch` (it must not launch again)."""
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def lost_contact(error: BaseException) -> bool:
    """Whether `error` says another rank is gone or hung (a collective failed), rather than what
    went wrong in this one."""
    if isinstance(error, dist.DistError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in message for sign in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")
    )


def launched_by_nmt() -> bool:
    """Whether `launch` started this process (then the launcher reports a failed rank)."""
    return os.environ.get(LAUNCHED_BY_NMT) == "1"


def restart_count() -> int:
    """How many times torchrun has restarted this job (`--max-restarts`)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def die_with_launcher() -> None:
    """Linux: this rank gets SIGKILL when its launcher dies, however it dies. torch's launcher
    starts every rank in a session of its own, so a launcher killed from outside (SIGKILL, a lost
    terminal) would otherwise leave its ranks training on."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl unavailable: ranks may outlive a killed launcher")
        return
    if os.getppid() != launcher:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def available_cores() -> int:
    """The cores this process may run on (its affinity), which a container may limit."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per local rank; the CPU is shared."""
    if device.type == "cuda" and ranks.distributed:
        if ranks.local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"rank {ranks.rank} has local rank {ranks.local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPUs: start at most one process per GPU",
                exit_code=2,
            )
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device


@contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout_s: float) -> Iterator[None]:
    """The default process group for this block (nothing with one process). A collective that
    waits longer than `timeout_s` for another rank fails instead of hanging."""
    if not ranks.distributed:
        yield
        return
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def split_batch(indices: Sequence[int], costs: Sequence[int], parts: int) -> list[list[int]]:
    """`indices` dealt into `parts` shares of nearly equal cost (costliest first, each to the
    cheapest share so far). Within a share the batch's order is kept."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for index in sorted(indices, key=lambda i: -costs[i]):
        lightest = loads.index(min(loads))
        shares[lightest].append(index)
        loads[lightest] += costs[index]
    position = {index: n for n, index in enumerate(indices)}
    return [sorted(share, key=position.__getitem__) for share in shares]


def broadcast_object(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (pickled; for a tokenizer or a checkpoint, not per step)."""
    if not ranks.distributed:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def all_sum(values: Sequence[float], ranks: Ranks) -> list[float]:
    """The sums over the ranks of a few numbers (float64, on the CPU group)."""
    if not ranks.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --- launching ----------------------------------------------------------------------------------
def resolve_processes(processes: int, device: torch.device, batch_tokens: int, precision: str = "fp32") -> int:
    """`train.processes`; 0: one per GPU on CUDA; on a Linux CPU in fp32 one per core while each
    share of a batch keeps ~1,000 tokens (smaller shares' products lose what a process gains);
    else 1. bf16 on a CPU trains in one process: a second one measured no faster (1.005x, 1.009x)
    for 1.7x the memory (docs/performance.md)."""
    if processes:
        return processes
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    if not sys.platform.startswith("linux") or precision == "bf16":
        return 1
    return max(1, min(available_cores(), batch_tokens // 1000))


def launch(processes: int, argv: Sequence[str], max_restarts: int = 0) -> None:
    """Run `python -m nmt.cli.train ARGV` as `processes` ranks on this machine and wait for them,
    as `torchrun --standalone --nproc-per-node PROCESSES` would. Raises LaunchError naming the
    rank that failed first and why."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=max_restarts,
        monitor_interval=0.5,
    )
    # torch's agent logs every start and stop, and each failure at length; LaunchError says what
    # matters in one line.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    from torch.distributed.elastic.multiprocessing.api import SignalException

    os.environ[LAUNCHED_BY_NMT] = "1"  # the processes inherit the environment
    try:
        elastic_launch(config, sys.executable)("-m", "nmt.cli.train", *argv)
    except ChildFailedError as error:
        raise LaunchError(*describe_failures(error.failures)) from None
    except SignalException as stop:
        # torch's agent has passed the signal on to the ranks and waited for them: they stopped
        # after a step, with last.pt written.
        raise LaunchError(f"stopped by {signal.Signals(stop.sigval).name}", 128 + stop.sigval) from None
    finally:
        del os.environ[LAUNCHED_BY_NMT]


def describe_failures(failures: dict) -> tuple[str, int]:
    """One line for the failure that came first: a rank killed by a signal, else a rank's own
    error; with exit status 2 when the ranks stopped on a user error already reported, the ranks
    that had not reached it yet having lost their peer or been stopped by the launcher."""
    codes = [failure.exitcode for failure in failures.values()]
    if 2 in codes and all(code in (2, LOST_PEER_EXIT, -signal.SIGTERM) for code in codes):
        return "training stopped on the error above", 2
    stopped = {failure.exitcode for failure in failures.values()} & {128 + signal.SIGINT, 128 + signal.SIGTERM}
    if stopped and all(failure.exitcode in stopped for failure in failures.values()):
        code = min(stopped)
        return f"stopped by {signal.Signals(code - 128).name} after a step; last.pt holds it", code

    def cause_first(item) -> tuple:
        # A signal from outside, then a rank's own error, then a rank that lost another one
        # (SIGTERM is what the launcher sends the others once one has failed).
        code = item[1].exitcode
        kind = 0 if code < 0 and code != -signal.SIGTERM else 2 if code in (LOST_PEER_EXIT, -signal.SIGTERM) else 1
        return kind, item[1].timestamp, item[0]

    rank, failure = min(failures.items(), key=cause_first)
    if failure.exitcode < 0:
        return f"training process rank {rank} was killed by {_signal_name(-failure.exitcode)}", 1
    return f"training process rank {rank} failed with exit status {failure.exitcode} (its error is above)", 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
