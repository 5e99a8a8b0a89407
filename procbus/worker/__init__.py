"""The worker process: what runs in each forked child."""

from procbus.worker.apps import WorkerApp, WorkerContext
from procbus.worker.worker import ExitCode, WorkerSpec, run_worker

__all__ = ["ExitCode", "WorkerApp", "WorkerContext", "WorkerSpec", "run_worker"]
