-- Service-hall, finance and admin staff who sign in to the web pages (sync_server/web/auth.py).
-- Passwords are salted scrypt hashes; failures lock the user out for a while like card PINs do.

CREATE TABLE web_staff_users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,                -- space-separated: hall finance admin
    password_hash BLOB NOT NULL,
    password_salt BLOB NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
