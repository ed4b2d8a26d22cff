-- Staff sessions end on the server like cardholder ones (migration 22): each staff cookie carries
-- its user's session generation, and signing out, a password change or reset and disabling the
-- user bump it, which ends every session of that user at once (sync_server/web/auth.py).

ALTER TABLE web_staff_users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
