"""Background jobs that run once across server processes (see scheduler.py)."""
