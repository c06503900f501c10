"""Tests of ``lightning_ehf/data``: data files, the data module (splits, streams, augmentation) and the
whitening moments taken from training rows. No fixtures of their own; the shared ones are in
``tests/conftest.py``."""
