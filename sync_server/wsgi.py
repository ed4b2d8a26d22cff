"""WSGI entry for any WSGI server, e.g. `waitress-serve sync_server.wsgi:app` (configured by YKT_DATA_DIR;
`ykt server` sets the limits of sync_server/serving.py)."""
from sync_server import private_dir
from sync_server.app import create_app

private_dir.owner_only_umask()

app = create_app()
