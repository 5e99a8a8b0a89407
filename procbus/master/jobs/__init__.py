"""Long commands as jobs: reload, restart, upgrade, scale, stop, start.

`queue` runs them one at a time at the top of the master's loop; `workers`,
`restart` and `upgrade` are their bodies (`bodies` says which is which),
each given the narrow `Tree` protocol (`tree`), never the master itself.
This package's own namespace holds only the queue: the command path
(`procbus.master.control`) uses jobs without knowing their bodies.
"""

from procbus.master.jobs.queue import Job, JobAborted, JobBody, JobFailed, Jobs, JobState

__all__ = ["Job", "JobAborted", "JobBody", "JobFailed", "JobState", "Jobs"]
