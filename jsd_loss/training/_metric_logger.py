import json
import time
from pathlib import Path
from typing import Mapping, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune.training.metric_logging import MetricLoggerInterface

Scalar = Union[torch.Tensor, float, int]


class JSONLMetricLogger(MetricLoggerInterface):
    """torchtune metric logger writing one JSON object per step to ``log_dir/metrics.jsonl``
    (and the resolved config to ``log_dir/config.yaml``), read back by the eval recipe.

    Args:
        log_dir (str): directory for the log files.
        filename (str): metrics file name. Default: "metrics.jsonl"
    """

    def __init__(self, log_dir: str, filename: str = "metrics.jsonl", **kwargs):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / filename
        self._file = open(self.path, "a")

    @staticmethod
    def _value(v: Scalar) -> float:
        return v.item() if isinstance(v, torch.Tensor) else float(v)

    def log(self, name: str, data: Scalar, step: int) -> None:
        self.log_dict({name: data}, step)

    def log_dict(self, payload: Mapping[str, Scalar], step: int) -> None:
        record = {"step": step, "time": time.time(), **{k: self._value(v) for k, v in payload.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_config(self, config: DictConfig) -> None:
        (self.log_dir / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-logs them)."""
        self._file.close()
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [l for l in lines if l.strip() and json.loads(l)["step"] <= step]
        self.path.write_text("".join(l + "\n" for l in kept))
        self._file = open(self.path, "a")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __del__(self) -> None:
        self.close()


def read_metrics(path: Union[str, Path]) -> list:
    """Records of a ``metrics.jsonl`` file (or of ``metrics.jsonl`` inside a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training metrics at {path}")
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
