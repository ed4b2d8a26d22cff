"""WSGI entry for any WSGI server, e.g. `waitress-serve sync_server.wsgi:app` (configured by YKT_DATA_DIR;
`ykt server` sets the limits of sync_server/serving.py)."""
from sync_server.app import create_app

app = create_app()
