"""Tests of the ``ehf`` command line: argument parsing, ``print-config``, ``eval`` and ``sample``, and bad
input (exit codes, one-line errors, no files left behind). No fixtures of their own; the shared ones are in
``tests/conftest.py``."""
