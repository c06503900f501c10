"""Tests of ``lightning_ehf/study`` (``ehf study``): study files, runners and launchers (local, SLURM
through ``fake_slurm/``, W&B sweeps), tuning, reports, statistics and analyses. No fixtures of their own;
the shared ones are in ``tests/conftest.py``, the study-writing helpers in ``test_study.py``."""
