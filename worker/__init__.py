"""Celery worker of the SDFT service: the training task, its runner, the heartbeat and the reaper.

Importing this package must stay cheap: torch and transformers are imported only when a job runs.
"""
