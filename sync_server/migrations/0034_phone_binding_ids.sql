-- Each binding gets a random public id, so the holder can list and remove bound phones without
-- app user ids showing up in URLs; last_used_ms shows when each was last used.

ALTER TABLE app_users ADD COLUMN binding_id TEXT;
ALTER TABLE app_users ADD COLUMN last_used_ms INTEGER;
UPDATE app_users SET binding_id = lower(hex(randomblob(12))) WHERE person_id IS NOT NULL;
CREATE UNIQUE INDEX app_users_binding ON app_users(binding_id);
