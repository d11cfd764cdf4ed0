"""Run logging: nanoGPT-style lines on stdout, OUT_DIR/metrics.jsonl, optional wandb. Process 0 only."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricsLogger:
    """Writes one JSON object per record; prints only on process 0 so a pod's log reads like one host's."""

    def __init__(self, out_dir: str, config=None, use_wandb: bool = False) -> None:
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.wandb = None
        if self.is_main and use_wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("config.wandb=True needs wandb: uv sync --extra wandb") from None
            self.wandb = wandb
            wandb.init(project=config.wandb_project, name=config.wandb_run_name, config=config.to_dict())

    def print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {"time": time.time(), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record.get("step"))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
