"""End-to-end tests: whole trainings through ``ehf`` (every experiment, option combinations, data files,
particles, efm), resume, preemption and DDP through the command, determinism, the benchmark, and
repository-wide checks (packaging and images, layering, version, documentation links). No fixtures of
their own; the shared ones are in ``tests/conftest.py``."""
