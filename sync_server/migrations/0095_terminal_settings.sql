-- Where each terminal stands, and the settings one terminal runs with instead of the site's
-- (sync_server/terminal_settings.py). The sync answer's configuration is the global `settings` with
-- the terminal's overrides on top; a POS's dish menu lives only here.

ALTER TABLE terminals ADD COLUMN location TEXT;    -- e.g. 一食堂二楼 3号窗口; NULL: not recorded

CREATE TABLE terminal_settings (
    terminal_id INTEGER PRIMARY KEY,   -- terminals.id
    settings TEXT NOT NULL,            -- JSON {key: value}, keys and bounds of terminal_settings.KEYS
    updated_ms INTEGER NOT NULL,
    updated_by TEXT NOT NULL           -- staff username, or the login name at the command line
);
