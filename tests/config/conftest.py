"""Tests of ``lightning_ehf/config``: loading, merging and validating YAML files and overrides, and the
shipped YAML files. No fixtures of their own; the shared ones are in ``tests/conftest.py``."""
