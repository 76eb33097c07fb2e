"""Per-epoch metrics: one JSON object per line in `metrics.jsonl`, and TensorBoard if installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..paths import write_text_atomic


class MetricsLog:
    """Appends epoch records to `out_dir/metrics.jsonl` and TensorBoard scalars to `out_dir/tb`.

    On resume the file is rewritten from the checkpoint's own history (`history`): a run killed
    between writing its checkpoint and its metrics line, or after writing lines of epochs the
    checkpoint never saw, still ends with exactly one line per epoch. TensorBoard events of
    epochs after the checkpoint are purged the same way. A new run creates neither the file nor
    `tb/` before its first record, so a run that fails in its first epoch leaves no empty logs.
    """

    def __init__(self, out_dir: Path, *, tensorboard: bool = True,
                 history: list[dict[str, Any]] | None = None) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.resumed_epochs = len(history or [])
        self.writer: Any = None
        self.opened = False
        if history:  # a resumed run's folder exists: bring its log in line with the checkpoint
            self._open(history)

    def _open(self, history: list[dict[str, Any]]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # In one step: a kill during the rewrite of a long run's log left it empty or cut.
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in history))
        self.opened = True
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # Epochs are logged as steps 1..E; a resumed run drops the killed run's later ones.
                n = self.resumed_epochs
                # A run resumed with --tensorboard whose first epochs had none (--no-tensorboard):
                # its epochs so far, so that tb/ shows the whole run, as metrics.jsonl does.
                earlier = history if not (self.out_dir / "tb").exists() else []
                self.writer = SummaryWriter(str(self.out_dir / "tb"),
                                            purge_step=n + 1 if n else None)
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: JSONL is enough
                self.writer = None
                return
            for record in earlier:
                self._scalars(record)
            self.writer.flush()

    def write(self, record: dict[str, Any]) -> None:
        if not self.opened:
            self._open([])
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self._scalars(record)
            self.writer.flush()

    def _scalars(self, record: dict[str, Any]) -> None:
        for k, v in record.items():
            if k != "epoch" and isinstance(v, int | float):
                self.writer.add_scalar(k.replace("_", "/", 1), v, record["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
