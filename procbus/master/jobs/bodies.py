"""Which body runs the job of which long command (the master asks `job_body`)."""

from __future__ import annotations

from typing import Any

from procbus.master.jobs.queue import JobBody
from procbus.master.jobs.restart import restart_tree
from procbus.master.jobs.tree import Tree
from procbus.master.jobs.upgrade import upgrade_tree
from procbus.master.jobs.workers import reload_tree, scale_tree, start_tree, stop_tree


def job_body(tree: Tree, kind: str, args: dict[str, Any]) -> JobBody:
    """The body of the job of command `kind` (as `procbus.master.control` names it)."""
    bodies: dict[str, JobBody] = {
        "reload": lambda job: reload_tree(tree, job, args.get("batch")),
        "restart": lambda job: restart_tree(tree, job, args["adopt"]),
        "upgrade": lambda job: upgrade_tree(tree, job),
        "stop": lambda job: stop_tree(tree, job),
        "start": lambda job: start_tree(tree, job),
        "scale": lambda job: scale_tree(tree, job, args["workers"]),
    }
    return bodies[kind]
