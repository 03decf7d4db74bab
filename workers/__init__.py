"""Celery workers: the app, its configuration, and thin tasks over bloodcell_core services."""
