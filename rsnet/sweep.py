"""Multiruns (``python scripts/run.py -m ...``) that survive failed jobs.

Hydra's launchers stop a sweep, or lose the other jobs' results, when a job raises or exits.
So in a multirun the command line's task function catches a job's error, logs it to the job's
``run.log`` and returns it as a :func:`failure` instead; this module's Hydra callback
(:class:`SweepStatus`, configured in ``conf/hydra/default.yaml``) records every job's outcome,
from whatever process or machine ran it (basic, joblib and submitit launchers alike), in the
sweep directory. When all jobs have ended the main process writes ``sweep.json`` there, names
the failed jobs and exits with status 1 if there are any. Finished jobs are not redone by a
rerun: each job's run directory resumes its finished stages (see rsnet.pipeline).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rsnet.errors import RsnetError
from rsnet.fileio import atomic_write_json, probe_writable

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def failure(error: BaseException, report: bool = True) -> dict:
    """What a failed job of a multirun returns (picklable, for any launcher); ``report`` logs
    it to the job's run.log (with the traceback of an unexpected error) and to stderr."""
    rsnet = isinstance(error, RsnetError)
    message = f"rsnet error: {error}" if rsnet else f"{type(error).__name__}: {error}"
    if report:
        log.error("%s", message, exc_info=not rsnet)
        print(message, file=sys.stderr)
    return {"error": message}


class SweepStatus(Callback):
    """Collects the jobs' outcomes of a multirun; a no-op for single runs."""

    def __init__(self) -> None:
        self.status_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # set before the launcher copies this callback to its workers; written by on_job_end
        self.status_dir = Path(config.hydra.sweep.dir).absolute() / f".jobs-{os.getpid()}"

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.status_dir is None:
            return
        try:
            value = job_return.return_value  # raises the job's exception if it escaped
            error = value.get("error") if isinstance(value, dict) else None
        except Exception as e:  # noqa: BLE001 - any error of a job is reported, not raised
            error = failure(e, report=False)["error"]
        num = config.hydra.job.num
        atomic_write_json(self.status_dir / f"{num}.json", {
            "job": num, "overrides": list(job_return.overrides or []),
            "run_dir": config.hydra.runtime.output_dir, "status": "failed" if error else "done",
            "error": error})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.status_dir is None:
            return
        jobs = sorted((json.loads(p.read_text()) for p in self.status_dir.glob("*.json")),
                      key=lambda j: j["job"])  # (a missing folder globs to nothing)
        shutil.rmtree(self.status_dir, ignore_errors=True)
        atomic_write_json(self.status_dir.parent / "sweep.json", {"jobs": jobs})
        failed = [j for j in jobs if j["status"] == "failed"]
        summary = f"sweep: {len(jobs)} jobs, {len(jobs) - len(failed)} done, {len(failed)} failed"
        log.info("%s (%s)", summary, self.status_dir.parent / "sweep.json")
        if failed:
            lines = [f"  #{j['job']} {j['run_dir']}\n      {j['error']}" for j in failed]
            print(summary + "\n" + "\n".join(lines), file=sys.stderr)
            sys.exit(1)


def check_writable_dir(path: Path, setting: str) -> None:
    """Exit with one message (status 2) when ``path`` cannot be created or written: Hydra
    makes the run directory and opens its log file there before rsnet's code runs."""
    try:
        probe_writable(path)
    except OSError as e:
        print(f"rsnet error: cannot write in {path} ({e.strerror}); pick a writable directory "
              f"with {setting}=...", file=sys.stderr)
        sys.exit(2)


class RunDirCheck(Callback):
    """Refuses, before Hydra touches it, a run or sweep directory that cannot be written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from rsnet import distributed
        if distributed.from_env().is_main:  # under torchrun only rank 0 writes there
            check_writable_dir(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable_dir(Path(config.hydra.sweep.dir), "hydra.sweep.dir")
