"""`History`: what a run reports (metrics.json), kept up to date by train.py, saved in every checkpoint, and read back
by attribute (report.md, report.png). An evaluation is a dict of metrics (its keys depend on the number of classes:
see metrics.classification_metrics) plus `rows`, `loss`, and during training its `epoch`, `step` and `seconds`."""

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass
class History:
    before: dict | None = None  # the evaluation before training
    epochs: list[dict] = dataclasses.field(default_factory=list)  # epoch, step, train_loss (+ metrics: epoch strategy)
    evaluations: list[dict] = dataclasses.field(default_factory=list)  # every evaluation during training
    best: dict | None = None  # metric, value, epoch, step
    stopped_early: dict | None = None  # epoch, step, reason
    after: dict | None = None  # the final model's evaluation
    confusion_matrix: dict | None = None  # labels, matrix (rows true, columns predicted): the final model's
    config: dict | None = None  # the run's record (train.py: run_record)
    speed: dict | None = None
    runtime_seconds: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "History":
        """From metrics.json or a checkpoint (older ones lack the fields set at the end)."""
        return cls(**{field.name: saved[field.name] for field in dataclasses.fields(cls) if field.name in saved})

    @classmethod
    def read(cls, path: Path) -> "History":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def evaluation_seconds(self) -> float:
        return sum(e["seconds"] for e in self.evaluations) + (self.before or {}).get("seconds", 0)
