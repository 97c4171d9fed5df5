"""Fuzz harnesses for every parser that reads bytes a peer or a client chose.

Each target (:mod:`fuzz.targets`) feeds one input to the real parsing code and names the
error types that code documents for bad input. Anything else it raises is a crash.

Two engines run the same targets:

* ``atheris`` (coverage-guided, libFuzzer underneath): ``python -m fuzz --count N``, or
  ``make fuzz FUZZ_COUNT=N``. One subprocess per target, one at a time; a corpus that grows
  across runs and the crashing inputs stay under ``.fuzz/<target>/``.
* ``mutate`` (in-process, deterministic, no coverage feedback): seeds plus random byte-level
  mutations from a fixed PRNG seed. ``tests/test_fuzz_targets.py`` runs every target this way
  for a few thousand inputs in ``make test``; ``python -m fuzz --engine mutate`` runs it at
  any count where atheris is not installed.

A crash found by either engine reproduces with ``python -m fuzz.reproduce TARGET FILE``.
"""
