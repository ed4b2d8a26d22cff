-- Firmware releases and their rollouts (sync_server/releases.py). A release is a bundle signed offline
-- with a release key (tools/release.py) whose public half is in release_keys; the server keeps the file
-- and offers it in the sync answer to the terminals a rollout names: one terminal, a merchant's
-- terminals (a group), or every terminal of its kind.

CREATE TABLE release_keys (
    public_hex TEXT PRIMARY KEY,            -- Ed25519 public key, 64 hex digits
    added_ms INTEGER NOT NULL
);

CREATE TABLE firmware_releases (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('pos', 'dispenser', 'activation')),
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,                   -- of the bundle file
    bytes INTEGER NOT NULL,
    file_name TEXT NOT NULL,                -- under <data dir>/releases/
    added_ms INTEGER NOT NULL,
    UNIQUE (kind, version)
);

CREATE TABLE firmware_rollouts (
    id INTEGER PRIMARY KEY,
    release_id INTEGER NOT NULL,            -- firmware_releases.id
    terminal_id INTEGER,                    -- one terminal, or
    merchant_id INTEGER,                    -- a merchant's terminals; both NULL: every terminal of the kind
    created_ms INTEGER NOT NULL
);
CREATE INDEX firmware_rollouts_release ON firmware_rollouts(release_id);
