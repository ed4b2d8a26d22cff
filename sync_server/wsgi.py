"""WSGI entry for gunicorn: `gunicorn sync_server.wsgi:app` (configured by YKT_DATA_DIR)."""
from sync_server.app import create_app

app = create_app()
