#!/bin/sh
# Entry point of the VIVA image. The first argument chooses the role:
#   web         collectstatic into the shared volume, then gunicorn on :8000
#   worker      Celery worker on $VIVA_QUEUES (default: default,io)
#   gpu-worker  Celery worker on the gpu queue, one process per GPU by default
#   migrate     apply database migrations (run once per deployment)
#   manage ...  any manage.py command, e.g. `manage createsuperuser`
#   anything else is executed as is.
set -eu

wait_for_db() {
    python - <<'PY'
import sys, time
import django
django.setup()
from django.db import connection
for attempt in range(60):
    try:
        connection.ensure_connection()
        sys.exit(0)
    except Exception as exc:  # the database container may still be starting
        print(f"waiting for the database: {exc}", file=sys.stderr)
        time.sleep(2)
sys.exit("the database did not become reachable")
PY
}

role="${1:-web}"
[ "$#" -gt 0 ] && shift
case "$role" in
    web)
        wait_for_db
        python manage.py collectstatic --noinput -v0
        exec gunicorn viva.wsgi:application \
            --bind 0.0.0.0:8000 \
            --workers "${GUNICORN_WORKERS:-4}" \
            --threads "${GUNICORN_THREADS:-2}" \
            --timeout "${GUNICORN_TIMEOUT:-300}" \
            --forwarded-allow-ips "${GUNICORN_FORWARDED_ALLOW_IPS:-*}" \
            --access-logfile - "$@"
        ;;
    worker)
        wait_for_db
        exec celery -A viva worker -Q "${VIVA_QUEUES:-default,io}" \
            -c "${VIVA_CONCURRENCY:-4}" -l "${VIVA_LOG_LEVEL:-info}" -n "worker@%h" "$@"
        ;;
    gpu-worker)
        wait_for_db
        exec celery -A viva worker -Q "${VIVA_QUEUES:-gpu}" \
            -c "${VIVA_CONCURRENCY:-1}" -l "${VIVA_LOG_LEVEL:-info}" -n "gpu@%h" "$@"
        ;;
    migrate)
        wait_for_db
        exec python manage.py migrate --noinput "$@"
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
