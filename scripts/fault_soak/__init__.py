"""The fault-injection soak of a procbus tree (``scripts/soak``).

A tree (``procbus run``, the demo app) serves HTTP load and answers publishes
while a seeded random schedule kills, stops, reloads, restarts, upgrades and
scales it and floods its sockets with bad frames; at the end every failure is
either explained by something the soak itself did, or counted against the tree.

Modules: `journal` (what the soak did and saw, and the rules that explain a
failure: pure), `tree` (the tree's processes: start, signal, sample, stop,
reap), `load` (HTTP clients), `publisher` (tree publishes), `faults` (the
schedule and the injectors), `garbage` (the bad frames), `report` (the
summary), `__main__` (the command line).
"""
