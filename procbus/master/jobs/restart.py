"""Restart: the master re-executes itself (same pid), with new workers or adopting its own.

The job checks first that a re-exec can work (the interpreter, the script),
so that nothing is drained for an exec that would fail. With ``adopt`` the
workers live on; otherwise they are drained first. The exec itself happens
after the job, once the master's loop has ended (`procbus.run`), with what
`procbus.master.handover` carries.
"""

from __future__ import annotations

from typing import Any

from procbus.bus import STARTUP_CWD
from procbus.master.handover import exec_problem
from procbus.master.jobs.queue import Job, JobFailed
from procbus.master.jobs.tree import Tree
from procbus.master.jobs.workers import stop_tree


def restart_tree(tree: Tree, job: Job, adopt: bool) -> dict[str, Any]:
    """The ``restart`` job: drain (unless `adopt`), then have the master re-execute."""
    executable, argv = tree.bus.exec_args()
    problem = exec_problem(executable, argv, STARTUP_CWD)
    if problem is not None:
        raise JobFailed(f"cannot re-execute: {problem}; nothing was stopped")
    if adopt:
        result: dict[str, Any] = {"adopted": len(tree.lineage.live_workers().workers)}
    else:
        result = stop_tree(tree, job)
    tree.lineage.re_execute(adopt)
    return {**result, "generation": tree.lineage.generation + 1}
