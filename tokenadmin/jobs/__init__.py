"""Background jobs that run once across server processes (see scheduler.py)."""

from tokenadmin.jobs.scheduler import Job, JobFunc, Scheduler, process_name

__all__ = ["Job", "JobFunc", "Scheduler", "process_name"]
