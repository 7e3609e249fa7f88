"""Benchmarks of the annotation app, run through ``manage.py bench <name>`` (DESIGN.md 7)."""
