"""Where a job's work runs and how its processes cooperate.

One `Runtime` per job wraps the job's `accelerate.Accelerator`: its device is where every
forward runs (training, reference log-probs, expert, evaluation), and under
`accelerate launch` with N processes it shards work, gathers results and reduces
statistics. With one process every collective is the identity, so the same code path runs
on a laptop CPU, one GPU, or N GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Runtime:
    def __init__(self, accelerator=None) -> None:
        from accelerate import Accelerator

        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())

    @property
    def device(self) -> torch.device:
        device = self.accelerator.device
        # MULTI_CPU names its device "cpu:<rank>", which torch.load's map_location rejects.
        return torch.device("cpu") if device.type == "cpu" else device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, on every process (any picklable object)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every process's `items`, concatenated in process order, on every process."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def shard(self, count: int) -> range:
        """This process's contiguous share of `count` items."""
        return shard_range(count, self.num_processes, self.process_index)

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Per-key mean over processes (every process must pass the same keys)."""
        if not self.distributed or not stats:
            return dict(stats)
        keys = sorted(stats)
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64,
                              device=self.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))

    def total(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())


def shard_range(count: int, num_processes: int, process_index: int) -> range:
    """Contiguous shares of `count` items over the processes, the first ones one larger."""
    base, extra = divmod(count, num_processes)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (1 if process_index < extra else 0))


_DEFAULT: Runtime | None = None


def default_runtime() -> Runtime:
    """The runtime of a caller that was not handed one (tests, library use): one process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Runtime()
    return _DEFAULT


def end_processes() -> None:
    """Once every job of this process has finished: wait for the job's other processes, then
    destroy the process group (nothing to do on one process). Left to interpreter exit,
    gloo's worker threads can still hold tensors while Python is torn down, and a process
    that finished its job aborts ("terminate called without an active exception", SIGABRT;
    pytorch/pytorch#190489). Call it on success only: after a failure another process may be
    waiting in a collective that will never complete."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def gather_in_order(runtime: Runtime, keyed: list[tuple[int, Any]]) -> list[Any]:
    """Values of (global index, value) pairs from every process, sorted by index."""
    return [value for _, value in sorted(runtime.gather(keyed), key=lambda pair: pair[0])]
