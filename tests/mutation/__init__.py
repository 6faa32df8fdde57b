"""Source-text mutations of the package, run on demand (``python tests/mutation/run.py``)."""
