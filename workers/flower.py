"""The Celery app as Flower runs it (`celery -A workers.flower flower`), with /metrics behind Flower's login.

Flower 2.2 serves /metrics to anyone, even with basic auth on: its handler lacks the login check every
other page has, and no option adds it. Its metrics name every worker and task type and count each
failure, so they get the same check here (tests/integration/test_security.py asserts it). /healthcheck
stays open: it says only "OK", and the compose health check probes it.
"""

from __future__ import annotations

import tornado.web
from flower.views.monitor import Metrics

from workers.app import app

Metrics.get = tornado.web.authenticated(Metrics.get)

__all__ = ["app"]
