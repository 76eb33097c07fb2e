"""Data-parallel training on CPUs with `torchrun` (DistributedDataParallel over gloo).

    torchrun --nproc-per-node 2 -m cnnzoo train resnet20 --data fashion-mnist
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --nproc-per-node 2 -m cnnzoo train ...            # same on the other node, --node-rank 1

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE; without them everything here is
a no-op and the run is a single process. Each process reads its own shard of the data
(`BatchLoader(shard=(rank, world))`); DDP averages gradients in backward, so a step over the
global batch equals a single process's step over the same samples (tested); metrics are summed
across processes before they are computed; only rank 0 writes files and prints.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return (self.rank, self.world)


def init_distributed(backend: str = "gloo") -> DistContext:
    """Join the process group torchrun set up (if any) and share the cores between processes."""
    global _threads_set
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if not ctx.is_main:
        # Only rank 0 prints: the data warnings (skipped files, ...) are the same on every rank.
        logging.getLogger("cnnzoo").setLevel(logging.ERROR)
    # N processes on one machine each default to all cores: oversubscription halves throughput.
    # (torchrun sets OMP_NUM_THREADS=1 itself for more than one process per node.)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cores() // ctx.local_world))
    _threads_set = True
    return ctx


CGROUP = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def usable_cores(cgroup: Path | None = None, membership: Path | None = None) -> int:
    """The cores this process may run on: those of its CPU affinity (taskset, a Slurm or
    container CPU set), not the machine's, and no more than its CPU quota (`cpu_quota`)
    rounded up. os.cpu_count() gave a process pinned to 4 of 64 cores 64 threads; the affinity
    alone gave a container run with `docker --cpus=2` on a 64-core host 64 threads, which the
    quota then let run for 2 cores' time: each throttled most of every 100 ms."""
    cores = _affinity_cores()
    quota = cpu_quota(cgroup, membership)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


CPUS = Path("/sys/devices/system/cpu")


def _physical_cores(cpus: Path | None = None) -> int | None:
    """The physical cores among the affinity's logical CPUs (hyperthreads of one core counted
    once), from each CPU's topology under `cpus` (default CPUS); None when it cannot be read."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = (cpus or CPUS) / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores) or None


def cpu_quota(cgroup: Path | None = None, membership: Path | None = None) -> float | None:
    """The CPU time, in cores, that this process's control groups allow it (docker --cpus,
    a Kubernetes CPU limit, systemd's CPUQuota=): cgroup v2's cpu.max (`200000 100000`: 2.0),
    or v1's cpu.cfs_quota_us / cpu.cfs_period_us, the least over the process's group and its
    parents; None when there is none (`max`, -1) or nothing to read (not Linux).

    cgroup: where the groups are mounted (default CGROUP); membership: the process's groups
    (default MEMBERSHIP, /proc/self/cgroup: `0::/PATH` for v2, `N:cpu,cpuacct:/PATH` for v1). A
    container sees its own group at the top of the mount, a process on a host under its path:
    both are looked at."""
    cgroup, membership = cgroup or CGROUP, membership or MEMBERSHIP
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    folders = {cgroup, cgroup / "cpu", cgroup / "cpu,cpuacct"}
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            bases = [cgroup]
        elif "cpu" in controllers.split(","):
            bases = [cgroup / controllers, cgroup / "cpu"]
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        folders.update(base.joinpath(*parts[:i]) for base in bases for i in range(len(parts) + 1))
    quotas = [q for q in map(_quota_in, folders) if q is not None]
    return min(quotas, default=None)


def _quota_in(folder: Path) -> float | None:
    """One group's CPU quota in cores (see `cpu_quota`), or None."""
    for quota_file, period_file in (("cpu.max", None),
                                    ("cpu.cfs_quota_us", "cpu.cfs_period_us")):  # fmt: skip
        try:
            words = (folder / quota_file).read_text().split()
            if period_file is not None:
                words += (folder / period_file).read_text().split()
            quota, period = float(words[0]), float(words[1])
        except (OSError, ValueError, IndexError):  # absent, unreadable, or v2's 'max'
            continue
        if quota > 0 and period > 0 and math.isfinite(quota / period):
            return quota / period
    return None


# Whether this process's torch threads have been chosen: by a command (`use_threads`),
# torchrun's share (`init_distributed`), or `library_threads` once.
_threads_set = False


def library_threads() -> None:
    """For a Python caller of the library (`transfer()`, `Trainer.fit`, `load_bundle`), once
    per process: torch's threads capped at `usable_cores`, as the commands cap them
    (`use_threads`). Torch's default follows the CPU affinity but not a container's CPU quota,
    so a notebook in a container given 2 CPUs of a 64-core host ran 64 threads, each throttled
    most of every 100 ms. Left as they are when chosen: by a command, OMP_NUM_THREADS, or the
    caller's torch.set_num_threads to another count than torch's default: the affinity's
    logical CPUs, or on a host with hyperthreads (most cloud machines' vCPUs) their physical
    cores, which torch built with MKL starts with (MKL scales down to them): the affinity
    alone read that default as the caller's choice, and the cap never applied there."""
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() in {
            _affinity_cores(), _physical_cores()}:  # fmt: skip
        torch.set_num_threads(min(torch.get_num_threads(), usable_cores()))


def use_threads(threads: int | None) -> None:
    """Set torch's CPU threads for a command: `threads` (its --threads) when given; else, unless
    OMP_NUM_THREADS chose, no more than `usable_cores`. Torch's own default follows the CPU
    affinity, but not a container's CPU quota."""
    global _threads_set
    _threads_set = True
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), usable_cores()))


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel on CPU when running under torchrun, else the model itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Buffers (BatchNorm running statistics) are broadcast from rank 0 at every forward: DDP's
    # default. Not passed explicitly: torch 2.13 deprecates `broadcast_buffers` with a warning
    # on every run, and older versions do not know its replacement `forward_sync_buffers`.
    return DistributedDataParallel(model)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, nn.parallel.DistributedDataParallel) else model


# Whether this process has met the others in a collective: until then every process ran the
# same checks on the same command line and files, and an error there is every process's.
_met = False


def _active() -> bool:
    """Whether this process is one of several in a process group (collectives are no-ops
    otherwise); each collective asks, so a True answer means the processes are meeting."""
    global _met
    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    _met = _met or active
    return active


def said_elsewhere(exc: BaseException, ctx: DistContext) -> bool:
    """Whether another process of the run reports `exc`, so this one stays silent: an error
    every process meets alike (bad data or settings, found before the processes first meet; a
    NaN loss, `CnnzooError.every_rank`) is said by the first process of each machine, not
    once per process. One that may be this process's own (its shard) is said by it."""
    from ..errors import CnnzooError

    return (ctx.enabled and ctx.local_rank != 0 and isinstance(exc, CnnzooError)
            and (not _met or exc.every_rank))


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum `t` in place over all processes (no-op in a single process). gloo has no int64
    reduction issue, but float64/int64 are reduced as they are."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool) -> bool:
    """True on every process if it is True on any (used to stop all ranks together)."""
    if _active():
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return flag


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every process (itself in a single process)."""
    if _active():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process. DDP does this at
    each forward of the wrapped model; an evaluation of the bare module needs it done first,
    else each process scores its shard with its own statistics."""
    if _active():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier() -> None:
    if _active():
        dist.barrier()


def cleanup(ok: bool = True) -> None:
    """Leave the process group. The barrier first: a rank that shuts gloo down while its peer
    still has traffic in flight can take the peer down with an abort (seen once in CI).
    ok=False (this rank is failing): no barrier and no teardown, since the peers may be waiting
    in another collective and would never meet it (both would hang); the process exits and
    torchrun stops the others."""
    if ok and dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
