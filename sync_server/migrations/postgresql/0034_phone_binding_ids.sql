-- PostgreSQL's form of ../0034_phone_binding_ids.sql: the same columns and index; the random public
-- id (24 hex digits, as SQLite's lower(hex(randomblob(12)))) from gen_random_uuid(), built in since 13.

ALTER TABLE app_users ADD COLUMN binding_id TEXT;
ALTER TABLE app_users ADD COLUMN last_used_ms INTEGER;
UPDATE app_users SET binding_id = substr(replace(gen_random_uuid()::text, '-', ''), 1, 24)
WHERE person_id IS NOT NULL;
CREATE UNIQUE INDEX app_users_binding ON app_users(binding_id);
