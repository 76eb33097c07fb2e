"""Per-epoch metrics: one JSON object per line in `metrics.jsonl`, and TensorBoard if installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends epoch records to `out_dir/metrics.jsonl` and TensorBoard scalars to `out_dir/tb`.

    On resume the file is rewritten from the checkpoint's own history (`history`): a run killed
    between writing its checkpoint and its metrics line, or after writing lines of epochs the
    checkpoint never saw, still ends with exactly one line per epoch. TensorBoard events of
    epochs after the checkpoint are purged the same way.
    """

    def __init__(self, out_dir: Path, *, tensorboard: bool = True,
                 history: list[dict[str, Any]] | None = None) -> None:
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        history = history or []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in history))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # Epochs are logged as steps 1..E; a resumed run drops the killed run's later ones.
                self.writer = SummaryWriter(str(out_dir / "tb"),
                                            purge_step=len(history) + 1 if history else None)
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: JSONL is enough
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            epoch = record["epoch"]
            for k, v in record.items():
                if k != "epoch" and isinstance(v, int | float):
                    self.writer.add_scalar(k.replace("_", "/", 1), v, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
