"""WSGI entry point for a production server: `gunicorn 'hms.wsgi:app'` (runs `hms db upgrade` first)."""

import sys

from hms import create_app
from hms.config import ConfigError

try:
    app = create_app({"HMS_START": True})
except ConfigError as exc:
    sys.stderr.write(f"hms: {exc}\n")
    sys.exit(4)  # gunicorn's "App failed to load": it stops every worker instead of restarting this one
