"""WSGI entry point for a production server: `gunicorn 'hms.wsgi:app'` (runs `hms db upgrade` first)."""

from hms import create_app

app = create_app({"HMS_START": True})
