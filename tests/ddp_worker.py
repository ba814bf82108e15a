"""One process of a torchrun job for tests/test_ddp.py: runs scripts/run.py (the real command
line) and records, for this rank, in $RSNET_TEST_OUT/rank{RANK}.pt:

- ``states``: the model's state dict when training starts and after every epoch, and
  ``history``: the epochs' rows (through a wrapper around rsnet.stages.train.fit);
- ``writes``: every file this process created, wrote, renamed or removed in the run
  directory ($RSNET_TEST_RUN_DIR), seen through a Python audit hook.

With RSNET_TEST_STOP_AFTER_EPOCH=e every rank raises after epoch e (a killed job).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RANK = int(os.environ["RANK"])
OUT = Path(os.environ["RSNET_TEST_OUT"])
RUN_DIR = os.path.abspath(os.environ["RSNET_TEST_RUN_DIR"])
STOP_AFTER = os.environ.get("RSNET_TEST_STOP_AFTER_EPOCH")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

writes: list[str] = []


def audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            bool((flags or 0) & WRITE_FLAGS)
    elif event == "os.rename":  # os.rename and os.replace: the destination
        path, writing = args[1], True
    elif event in ("os.remove", "os.rmdir", "os.truncate", "shutil.rmtree"):
        path, writing = args[0], True
    else:
        return
    if writing and not isinstance(path, int):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(RUN_DIR + os.sep):
            writes.append(f"{event} {path}")


class Stop(Exception):
    pass


def clone(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def main() -> None:
    from rsnet.stages import train as train_stage

    real_fit = train_stage.fit
    record: dict = {"states": [], "history": [], "writes": writes}

    def recording_fit(model, *args, on_epoch_end=None, **kwargs):
        record["states"].append(clone(model))

        def after_epoch(epoch: int, row: dict) -> None:
            record["states"].append(clone(model))
            record["history"].append(row)
            if STOP_AFTER is not None and epoch == int(STOP_AFTER):
                raise Stop(f"stopped after epoch {epoch}")

        return real_fit(model, *args, on_epoch_end=after_epoch, **kwargs)

    train_stage.fit = recording_fit
    sys.addaudithook(audit)
    sys.argv = [str(REPO / "scripts" / "run.py"), *sys.argv[1:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        torch.save(record, OUT / f"rank{RANK}.pt")


if __name__ == "__main__":
    main()
