"""Job handlers of this package (imported by the app's job_handlers module)."""
