"""Training, export, calibration and evaluation of the evidence model (torch; never imported by
the service)."""
