"""Celery workers (queued classification and retraining). Not built yet: see the queued-service issue.

This package will hold only the Celery app, its configuration and thin tasks over bloodcell_core.
"""
