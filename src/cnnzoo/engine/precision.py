"""Choose fp32 or bf16 autocast, NCHW or channels_last, by timing the actual model on this CPU.

Why measure instead of assuming: on an EPYC with AVX-512 bf16, bf16 autocast + channels_last ran
conv nets 1.5-2.3x faster than fp32 NCHW (about 1.0x on LeNet-5; bf16 in NCHW lost most of the
gain; /work/shared/README.md). A CPU without native bf16 (AVX2 only) emulates it and is usually
slower. The winner depends on the CPU, the model and the batch, so `choose_precision` times a few
training steps of a copy of the model on a batch of the real shape and caches the answer per
(CPU, torch, threads, model, input) in ~/.cache/cnnzoo/precision.json (`CNNZOO_CACHE` overrides).
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..paths import cache_root, write_text_atomic
from .task import Task


@dataclass(frozen=True)
class Precision:
    """How the engine runs: `dtype` 'bf16' (CPU autocast) or 'fp32', and the memory format."""

    dtype: str = "fp32"
    channels_last: bool = False
    source: str = "default"  # 'measured', 'cached', 'forced' or 'default'
    speedup: float = 1.0  # measured images/s relative to fp32 NCHW (1.0 when not measured)

    def autocast(self) -> Any:
        if self.dtype == "bf16":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def setup(self) -> str:
        """'bf16 channels_last', 'fp32 NCHW', ..."""
        return f"{self.dtype} {'channels_last' if self.channels_last else 'NCHW'}"

    def describe(self) -> str:
        extra = f", {self.speedup:.2f}x vs fp32 NCHW" if self.source == "measured" else ""
        return f"{self.setup} ({self.source}{extra})"

    def resumed(self, precision: str = "auto", channels_last: str = "auto") -> Precision:
        """The setup a run saved with this one continues in: its own, except what `precision`
        ('bf16' | 'fp32') or `channels_last` ('on' | 'off') gives explicitly ('auto': keep)."""
        dtype = self.dtype if precision == "auto" else precision
        cl = self.channels_last if channels_last == "auto" else channels_last == "on"
        if (dtype, cl) == (self.dtype, self.channels_last):
            return Precision(self.dtype, self.channels_last, "checkpoint", self.speedup)
        return Precision(dtype, cl, "forced")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_checkpoint(cls, ckpt: dict[str, Any]) -> Precision:
        """The setup a checkpoint's run trained and validated in (fp32 NCHW when it records
        none): what scoring or predicting with it repeats, so that `cnnzoo evaluate` scores the
        very masks `cnnzoo segment` writes (bf16 and fp32 differ on pixels near a tie)."""
        saved = ckpt.get("precision")
        return cls(**{**saved, "source": "checkpoint"}) if saved else cls()


def cpu_features() -> dict[str, Any]:
    """What the CPU offers for bf16: torch's dispatch level and the relevant /proc/cpuinfo flags."""
    flags: set[str] = set()
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = "unknown"
    native = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    return {"model": model, "capability": capability, "bf16_flags": native,
            "native_bf16": bool(native)}


def _cache_path() -> Path:
    return cache_root() / "precision.json"


def _cache_key(model: nn.Module, shape: tuple[int, ...]) -> str:
    cpu = cpu_features()
    n_params = sum(p.numel() for p in model.parameters())
    name = getattr(getattr(model, "default_cfg", None), "name", type(model).__name__)
    return (f"{cpu['model']}|{cpu['capability']}|{','.join(cpu['bf16_flags'])}|torch "
            f"{torch.__version__}|{torch.get_num_threads()} threads|{name}|{n_params}|"
            f"{'x'.join(map(str, shape))}")


def _read_cache() -> dict[str, Any]:
    """The cached choices, keeping only well-formed entries: a file edited by hand or written in
    another layout costs a re-measurement, not the run."""
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items()
            if isinstance(v, dict) and v.get("dtype") in ("fp32", "bf16")
            and isinstance(v.get("channels_last"), bool)
            and isinstance(v.get("speedup", 1.0), int | float)}  # fmt: skip


def _write_cache(key: str, value: dict[str, Any]) -> None:
    try:
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = value
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    except (OSError, UsageError):
        pass  # a read-only home (or none) only costs a re-measurement next time


class _Trial:
    """One candidate's copy of the model, its optimizer and the batch in its memory format."""

    def __init__(self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                 precision: Precision) -> None:
        self.precision = precision
        self.model = copy.deepcopy(model).to(memory_format=precision.memory_format).train()
        self.x = x.contiguous(memory_format=precision.memory_format)
        self.y = y
        self.task = task
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-6)
        self.times: list[float] = []

    def step(self) -> float:
        t0 = time.perf_counter()
        with self.precision.autocast():
            out = self.model(self.x)
        loss = self.task.loss(out, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def median(self) -> float:
        t = sorted(self.times)
        return t[len(t) // 2]


def time_candidates(
    model: nn.Module,
    task: Task,
    batch: tuple[torch.Tensor, torch.Tensor],
    candidates: list[Precision],
    *,
    rounds: int = 5,
    budget_s: float = 20.0,
) -> dict[Precision, float]:
    """Median seconds per training step of each candidate, on deep copies of `model`.

    The candidates are timed in interleaved rounds (A B C A B C ...), so that a load change on a
    shared machine hits all of them alike. After the first timed round, a candidate more than
    twice as slow as the fastest is dropped (bf16 emulated on an AVX2 CPU runs ~10x slower on
    conv nets: one round is enough to know). Stops early after 3 rounds when over `budget_s`.
    """
    x, y = batch
    trials = [_Trial(model, task, x, y, c) for c in candidates]
    for t in trials:  # warm-up: first steps allocate and pick kernels
        t.step()
    t_start = time.perf_counter()
    for r in range(rounds):
        for t in trials:
            t.times.append(t.step())
        if r == 0:
            fastest = min(t.times[0] for t in trials)
            keep = [t for t in trials if t.times[0] <= 2 * fastest]
            dropped = [t for t in trials if t not in keep]
            trials = keep
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    out = {t.precision: t.median() for t in trials}
    out.update({t.precision: t.times[0] for t in dropped})
    return out


def choose_precision(
    model: nn.Module,
    task: Task,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    precision: str = "auto",
    channels_last: str = "auto",
    use_cache: bool = True,
    verbose: bool = False,
) -> Precision:
    """Pick dtype and memory format for training `model` on batches like `batch`.

    precision: 'auto' | 'bf16' | 'fp32'; channels_last: 'auto' | 'on' | 'off'. Forced choices are
    returned as they are; 'auto' times the candidates (fp32 NCHW, fp32 channels_last, bf16
    channels_last — bf16 in NCHW is left out, it keeps little of bf16's gain) on a deep copy of
    the model, leaving the model, its BatchNorm statistics and the global RNG untouched.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if channels_last not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be auto, on or off, not {channels_last!r}")
    x, y = batch
    if x.dim() != 4:  # channels_last only exists for 4-d inputs
        channels_last = "off"
    if precision != "auto" and channels_last != "auto":
        return Precision(precision, channels_last == "on", "forced")
    dtypes = ["fp32", "bf16"] if precision == "auto" else [precision]
    formats = [False, True] if channels_last == "auto" else [channels_last == "on"]
    candidates = [
        Precision(d, cl) for d in dtypes for cl in formats
        if not (d == "bf16" and not cl and channels_last == "auto")
    ]
    if len(candidates) == 1:
        return Precision(candidates[0].dtype, candidates[0].channels_last, "forced")

    key = _cache_key(model, tuple(x.shape)) + f"|{precision}|{channels_last}"
    if use_cache:
        hit = _read_cache().get(key)
        if hit:
            return Precision(hit["dtype"], hit["channels_last"], "cached", hit.get("speedup", 1.0))

    with torch.random.fork_rng(devices=[]):  # dropout in the trial steps must not shift the run
        timings = time_candidates(model, task, (x, y), candidates)
    best = min(timings, key=lambda c: timings[c])
    base = timings.get(Precision("fp32", False), timings[candidates[0]])
    speedup = base / timings[best]
    if verbose:
        for cand, t in timings.items():
            print(f"  {cand.dtype} {'channels_last' if cand.channels_last else 'NCHW'}: "
                  f"{x.shape[0] / t:,.0f} images/s")
    chosen = Precision(best.dtype, best.channels_last, "measured", round(speedup, 3))
    if use_cache:
        _write_cache(key, {"dtype": chosen.dtype, "channels_last": chosen.channels_last,
                           "speedup": chosen.speedup})
    return chosen
