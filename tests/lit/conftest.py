"""Tests of ``lightning_ehf/lit`` and what it drives: the Lightning module (objective, Lagrangian, metrics,
precision), callbacks (stopping, progress, non-finite steps), loggers and W&B, plots, checkpoints and DDP
ranks (``ddp_driver.py``: the script the DDP tests start). No fixtures of their own; the shared ones are in
``tests/conftest.py``."""
