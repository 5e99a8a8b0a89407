"""Who a worker runs as (``--user``/``--group``): resolved in the master, applied after fork.

The names are looked up in the master when it starts, so that a typo fails
the start once instead of every worker. Each worker switches right after
fork, before it opens any connection to the master or imports the app, the
way gunicorn and ``runuser`` do:

- ``--user U``: the primary group of U (unless ``--group`` names another) and
  U's supplementary groups (``initgroups``), then U's uid;
- ``--group G`` alone: gid G and no supplementary groups; the uid stays.

Nothing of the master's groups is kept (root's supplementary groups included).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from procbus.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    """The uid, gid and user name a worker switches to (None: unchanged)."""

    uid: int | None
    gid: int
    user_name: str | None
    """For the supplementary groups (``initgroups``); None: none at all."""

    @classmethod
    def resolve(cls, user: str | int | None, group: str | int | None) -> Credentials | None:
        """Look `user` and `group` up (names or numbers); None when both are None.

        Raises `ConfigError` naming an unknown user or group.
        """
        if user is None and group is None:
            return None
        uid: int | None = None
        name: str | None = None
        primary: int | None = None
        if user is not None:
            entry = _user(user)
            if entry is None:
                if isinstance(user, str):
                    raise ConfigError(f"user {user!r}: no such user")
                uid = user  # a bare uid with no passwd entry: no groups of its own
            else:
                uid, name, primary = entry.pw_uid, entry.pw_name, entry.pw_gid
        if group is not None:
            gid = _group(group)
        elif primary is not None:
            gid = primary
        else:
            raise ConfigError(f"user {user!r} has no passwd entry: give --group too")
        return cls(uid, gid, name)

    def differs_from_current(self) -> bool:
        """Whether a worker would run as another uid or gid than this process."""
        return (self.uid is not None and self.uid != os.getuid()) or self.gid != os.getgid()

    def apply(self) -> None:
        """Switch this process (a worker, right after fork). Needs root."""
        if self.user_name is not None:
            os.initgroups(self.user_name, self.gid)
        else:
            os.setgroups([])
        os.setgid(self.gid)
        if self.uid is not None:
            os.setuid(self.uid)

    def groups(self) -> set[int]:
        """The gids a worker will have (primary and supplementary)."""
        found = {self.gid}
        if self.user_name is not None:
            found.update(os.getgrouplist(self.user_name, self.gid))
        return found

    def describe(self) -> str:
        who = f"uid {self.uid}" if self.uid is not None else "the master's uid"
        return f"{who}, gid {self.gid}"


def _user(user: str | int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    except KeyError:
        return None


def _group(group: str | int) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"group {group!r}: no such group") from None
