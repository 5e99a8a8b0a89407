"""How a tree publish is made: its options, the same from every caller.

A publish on the tree (from the master's Python code, ``procbus ctl publish``
or a worker's `procbus.tree`) may say

- ``require``: what "done" means. ``"all"`` (the default) waits for every
  target; ``"any"`` for the first that answers without error; a number N for
  N such answers. The reply comes back as soon as the requirement is met or
  can no longer be met; the targets that had not answered are ``pending``.
- ``to``: the ids of the only workers to publish to; ``to_generation``: only
  the workers of that generation. A target that does not exist is an error.
- ``retain``: keep this publish in the master for every worker started later
  (as MQTT's retained messages); with ``clear``, drop the channel's retained
  publish instead of publishing.
- ``include_self``: for a publish from a worker, whether that worker is a
  target too (it is by default).

`PublishOptions.parse` checks options from the wire (a control request or a
worker's message) and raises ``ValueError`` with one line naming the bad
value and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

Require = Literal["all", "any"] | int
"""``"all"``, ``"any"`` or a number of workers (>= 1)."""

MAX_TARGETS: Final = 4096
"""Worker ids one publish may name in ``to``."""

OPTION_NAMES: Final = frozenset({"require", "to", "to_generation", "retain", "clear"})
"""The keyword names a publish reserves for its options (besides ``timeout``):
a listener cannot take a keyword argument by one of these names."""


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """The options of one tree publish (see the module docstring)."""

    require: Require = "all"
    to: tuple[int, ...] | None = None
    to_generation: int | None = None
    retain: bool = False
    clear: bool = False
    include_self: bool = True

    def __post_init__(self) -> None:
        _check_require(self.require)
        if self.to is not None:
            object.__setattr__(self, "to", _worker_ids(self.to))
        if self.to_generation is not None and not _is_id(self.to_generation):
            raise ValueError(
                f"to_generation must be a generation >= 1, got {self.to_generation!r}"
            )
        for name in ("retain", "clear", "include_self"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.to is not None and self.to_generation is not None:
            raise ValueError("to and to_generation exclude each other: give one")
        if self.retain and (self.to is not None or self.to_generation is not None):
            raise ValueError(
                "a retained publish goes to every worker started later: it takes no to or "
                "to_generation"
            )
        if self.clear and not self.retain:
            raise ValueError("clear drops a retained publish: it needs retain")

    @property
    def targeted(self) -> bool:
        """Whether the publish names its targets (``to`` or ``to_generation``)."""
        return self.to is not None or self.to_generation is not None

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], *, allowed: Iterable[str] = OPTION_NAMES
    ) -> PublishOptions:
        """The options in `raw` (a request's options, a worker's message).

        Names not in `allowed` are refused; ``require`` may be ``"all"``,
        ``"any"``, a number or a number as text (``--require 2``), ``to`` a list
        of ids or a text such as ``"1,3"``. Raises ``ValueError`` naming the bad
        value and what was expected.
        """
        allowed = frozenset(allowed)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(
                f"unknown publish option {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
            )
        values = dict(raw)
        if isinstance(values.get("require"), str) and values["require"].isdigit():
            values["require"] = int(values["require"])
        return cls(**values)

    def wire(self) -> dict[str, Any]:
        """The options that differ from the defaults, as `parse` takes them back."""
        found: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value != spec.default:
                found[spec.name] = list(value) if isinstance(value, tuple) else value
        return found


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_require(value: object) -> None:
    if value in ("all", "any") or _is_id(value):
        return
    raise ValueError(f'require must be "all", "any" or a number of workers >= 1, got {value!r}')


def _worker_ids(value: object) -> tuple[int, ...]:
    """``[1, 3]``, ``(1, 3)`` or ``"1,3"`` as a tuple of worker ids, else ``ValueError``."""
    ids = value
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if all(part.isdigit() for part in parts):
            ids = [int(part) for part in parts]
    if isinstance(ids, (list, tuple)) and 0 < len(ids) <= MAX_TARGETS and all(map(_is_id, ids)):
        return tuple(dict.fromkeys(ids))
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ValueError(f"to must be 1 to {MAX_TARGETS} worker ids >= 1 (as 1,3), got {shown}")


DEFAULT: Final = PublishOptions()
