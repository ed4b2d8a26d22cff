-- Terminal key rotation (sync_server/key_rotation.py): the version a terminal is being moved to. While
-- it is set the server takes requests signed with key_version or next_key_version; the first sync
-- signed with the next one makes it key_version and the old key stops working.
ALTER TABLE terminals ADD COLUMN next_key_version INTEGER;
ALTER TABLE terminals ADD COLUMN next_key_asked_ms INTEGER;  -- when that rotation was asked for
ALTER TABLE terminals ADD COLUMN key_rotated_ms INTEGER;     -- when the last rotation completed
