"""The Celery application.

Embedded default: kombu's filesystem transport under ``var/broker`` so a laptop needs no
broker server; set ``CELERY_BROKER_URL=redis://…`` for the scale-out stack.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viva.settings")

app = Celery("viva")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
