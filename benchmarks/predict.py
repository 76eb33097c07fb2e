"""How long `cnnzoo predict` takes on one photo with EfficientNet-Lite0's ImageNet weights, cold
(a new process, as a user runs it), and where that time goes.

    flock /tmp/cnnzoo-bench.lock .venv/bin/python benchmarks/predict.py [--repeats 3]

Measures, as separate fresh processes (median of --repeats): `import torch`, `import cnnzoo.cli`
and the whole `cnnzoo predict IMAGE` command; then, inside this process, the steps of one
prediction: building the model, loading the weights, decoding and preprocessing the image, the
first forward pass, and warm passes of 1 and 16 images with 1 and 2 threads (`cnnzoo predict`
uses one thread for up to 16 images). The issue's goal: the whole command under 3 s on 2 cores.
The photo is scikit-image's chelsea() saved as a JPEG (needs cnnzoo[data,pretrained]).
--files N adds images/s over N exported Fashion-MNIST files: `cnnzoo predict`'s loop against a
hand-written one with the same decoding, batches and precision.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _cli import SRC, run, usable_cores

from cnnzoo.commands.argtypes import COUNT

GOAL_S = 3.0
# The timed processes import cnnzoo from this checkout too, as this one does.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall time of running `cmd` in a fresh process `repeats` times (output discarded)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=CHILD_ENV)  # fmt: skip
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def forward_rows(model: Any, x: Any) -> list[tuple[str, float]]:
    """The first and the warm forward passes of one image `x` (1, C, H, W) and of 16, on 1 and
    2 threads, in the precision and memory layout `cnnzoo predict` runs them in (bf16 +
    channels-last on a CPU with native bf16, else fp32), named in each row: timed in fp32 NCHW,
    they described another computation than the end-to-end line's."""
    import torch

    from cnnzoo.transfer.features import held_for_inference, inference_dtype, run_model

    dtype = inference_dtype("auto")
    how = "bf16 channels_last" if dtype == "bf16" else "fp32"
    rows = []
    torch.set_num_threads(1)  # what `cnnzoo predict` uses for one batch
    with held_for_inference(model, dtype):
        rows.append((f"  first forward pass (1 image, 1 thread, {how})",
                     timed(lambda: run_model(model, x, dtype))[0]))  # fmt: skip
        batch = x.repeat(16, 1, 1, 1)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            run_model(model, x, dtype)
            one = statistics.median(timed(lambda: run_model(model, x, dtype))[0]
                                    for _ in range(10))  # fmt: skip
            sixteen = statistics.median(timed(lambda: run_model(model, batch, dtype))[0]
                                        for _ in range(3))  # fmt: skip
            rows += [
                (f"  warm forward, 1 image, {threads} thread(s), {how} (median of 10)", one),
                (f"  warm forward, 16 images, {threads} thread(s), {how} (median of 3)", sixteen),
            ]
    return rows


def cnnzoo_command() -> list[str]:
    """The installed `cnnzoo` script next to this Python (what users run), else `-m cnnzoo`."""
    script = Path(sys.executable).with_name("cnnzoo")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnnzoo"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=COUNT, default=3,
                    help="fresh processes per command (median)")
    ap.add_argument("--model", default="efficientnet_lite0",
                    help="a model whose ImageNet weights are installed (efficientnet_lite0/1/2)")
    ap.add_argument("--files", type=COUNT, default=None, metavar="N",
                    help="also images/s over a folder of N Fashion-MNIST test files (a multiple "
                         "of 10): `cnnzoo predict`'s loop against a hand-written one, --repeats "
                         "interleaved rounds")  # fmt: skip
    args = ap.parse_args()

    from PIL import Image
    from skimage.data import chelsea

    tmp = Path(tempfile.mkdtemp(prefix="cnnzoo-bench-predict-"))
    photo = tmp / "chelsea.jpg"
    Image.fromarray(chelsea()).save(photo, quality=95)
    py = sys.executable
    rows: list[tuple[str, float]] = []
    folder_rows: list[tuple[str, float]] = []
    try:
        # Warm the OS file cache once so that every repeat measures the same thing (a truly
        # first run after boot also reads ~400 MB of torch libraries from disk). A model
        # without installed weights fails here, with cnnzoo's own one-line reason.
        warm = subprocess.run([*cnnzoo_command(), "predict", str(photo), "--model", args.model],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=CHILD_ENV)  # fmt: skip
        if warm.returncode:
            lines = warm.stderr.strip().splitlines() or [f"exit status {warm.returncode}"]
            raise SystemExit(f"predict.py: error: {lines[-1]}")
        rows.append(("python -c 'import torch'", wall([py, "-c", "import torch"], args.repeats)))
        rows.append(("python -c 'import cnnzoo.cli'",
                     wall([py, "-c", "import cnnzoo.cli"], args.repeats)))  # fmt: skip
        e2e = wall([*cnnzoo_command(), "predict", str(photo), "--model", args.model],
                   args.repeats)  # fmt: skip

        import torch

        from cnnzoo.models import create_model
        from cnnzoo.weights import create_pretrained

        torch.set_num_threads(1)  # what `cnnzoo predict` uses for one batch
        t_build, _ = timed(lambda: create_model(args.model))
        t_load, model = timed(lambda: create_pretrained(args.model, "imagenet").eval())
        pre = model.weights_info.preprocessing
        t_img, x = timed(lambda: pre.load(photo)[None])
        rows += [
            (f"  create_model({args.model!r}) (random init)", t_build),
            (f"  create_pretrained({args.model!r}, 'imagenet') (build + load)", t_load),
            ("  decode + preprocess the JPEG (451x300)", t_img),
        ]
        rows += forward_rows(model, x)
        if args.files:
            folder_rows = files_per_second(model, tmp / "files", args.files, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"cnnzoo predict benchmark -- {cpu_name()}, {usable_cores()} of {os.cpu_count()} "
          "cores usable, "
          f"torch {torch.__version__}, load average {load}")  # fmt: skip
    print(f"fresh processes: median of {args.repeats}; in-process steps: one run each unless "
          "stated\n")  # fmt: skip
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'step':<{width}}{'seconds':>9}")
    print("-" * (width + 9))
    for name, sec in rows:
        print(f"{name:<{width}}{sec:>9.3f}")
    print("-" * (width + 9))
    verdict = "meets" if e2e < GOAL_S else "MISSES"
    print(f"{'cnnzoo predict chelsea.jpg (end to end)':<{width}}{e2e:>9.3f}   "
          f"{verdict} the < {GOAL_S:.0f} s goal")  # fmt: skip
    if args.files:
        print(f"\n{args.files} files, 1 thread, images/s (median of {args.repeats} interleaved "
              "rounds)\n\n| loop | images/s |\n|---|---:|")
        for name, rate in folder_rows:
            print(f"| {name} | {rate:.1f} |")


def files_per_second(model: Any, folder: Path, n: int, repeats: int) -> list[tuple[str, float]]:
    """Images/s of `cnnzoo predict`'s loop (`iter_classified`: decode, batches of 16, its
    precision) and of a hand-written one (the same decoding, normalisation and batches, bf16 +
    channels-last on a CPU with native bf16, else fp32) over `n` exported Fashion-MNIST files."""
    import torch

    from cnnzoo.commands.predict import expand_paths, iter_classified
    from cnnzoo.data.images import ImageSpec
    from cnnzoo.transfer.features import inference_dtype

    subprocess.run([*cnnzoo_command(), "data", "export", "fashion-mnist", str(folder),
                    "--per-class", str(max(1, n // 10)), "--split", "test"], check=True,
                   stdout=subprocess.DEVNULL, env=CHILD_ENV)  # fmt: skip
    paths = expand_paths([folder])
    pre = model.weights_info.preprocessing
    spec = ImageSpec(size=pre.crop_size, channels=3, method=pre.fit,
                     resize_size=pre.resize_size, interpolation=pre.interpolation)  # fmt: skip
    bf16 = inference_dtype("auto") == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format

    def hand() -> None:
        model.to(memory_format=layout)
        for i in range(0, len(paths), 16):
            x = torch.stack([pre.normalize(spec.load(p)) for p in paths[i:i + 16]])
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(x.contiguous(memory_format=layout)).float().softmax(1)
        model.to(memory_format=torch.contiguous_format)

    loops = {f"hand-written ({'bf16 + channels-last' if bf16 else 'fp32'})": hand,
             "cnnzoo predict (iter_classified)":
                 lambda: list(iter_classified(model, pre, paths, progress=False))}
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(repeats + 1):  # round 0 warms up
        for name, loop in loops.items():
            t, _ = timed(loop)
            if r:
                rates[name].append(len(paths) / t)
    return [(name, statistics.median(v)) for name, v in rates.items()]


if __name__ == "__main__":
    run(main)
