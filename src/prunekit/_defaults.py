"""Defaults shared by the library, the schedules and the recipes (documented in config.py)."""

#: ``(inputs, targets)`` batches that data-driven criteria read.
DEFAULT_CALIBRATION_BATCHES = 8
#: single samples for the Fisher diagonal (obd / fisher).
DEFAULT_FISHER_SAMPLES = 256
