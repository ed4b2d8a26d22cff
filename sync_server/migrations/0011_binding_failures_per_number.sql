-- Failed phone-app bindings counted per cardholder (the staff/student number asked about), so a
-- new app user id per guess cannot escape the lockout (sync_server/services/binding.py). One row
-- per person at most: unknown numbers are not counted, so the table cannot grow without bound.

CREATE TABLE bind_failures (
    person_id INTEGER PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL
);
