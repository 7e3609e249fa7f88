"""WSGI entry point (gunicorn viva.wsgi in production)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viva.settings")
application = get_wsgi_application()
