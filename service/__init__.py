"""Evidence Triage runtime: intake, quality checks, ONNX scoring, triage policy, API and CLI.

Nothing in this package imports torch; training/ imports from here, never the other way round.
"""

__version__ = "0.1.0"
