-- 发卡/补卡任务 (sync_server/services/card_jobs.py): the hall page asks for a card, the issuing station
-- (`ykt hall station`) takes the job, checks a blank card, allocates the card and writes it. An account has
-- at most one open job (pending, writing or failed). The reissue fee is booked once per job, under the
-- transfer id fee/card-job/<id>, however many blank cards the job takes.

CREATE TABLE card_jobs (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL,             -- persons.id
    account_id INTEGER NOT NULL,            -- accounts.id
    kind TEXT NOT NULL CHECK (kind IN ('issue', 'reissue')),
    fee_source TEXT NOT NULL CHECK (fee_source IN ('balance', 'cash', 'none')),
    requested_by TEXT NOT NULL,             -- the clerk who asked (staff user name)
    requested_user_id INTEGER NOT NULL,     -- web_staff_users.id; 0: a name that is no web staff user
    station TEXT,                           -- the station asked for; NULL: any station
    status TEXT NOT NULL CHECK (status IN ('pending', 'writing', 'done', 'failed', 'cancelled')),
    reason_zh TEXT,                         -- why it failed (or who cancelled it)
    reason_en TEXT,
    claimed_by TEXT,                        -- the station that took it last
    attempts INTEGER NOT NULL DEFAULT 0,    -- cards allocated for it (a torn write voids one)
    card_number INTEGER,                    -- of the last attempt
    generation INTEGER,
    uid BLOB,
    fee_fen INTEGER NOT NULL DEFAULT 0,     -- booked, once
    fee_transfer_id TEXT UNIQUE,
    staff_action_id INTEGER,                -- the receipt: staff_actions.id, once done
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX card_jobs_open ON card_jobs(account_id) WHERE status IN ('pending', 'writing', 'failed');
CREATE INDEX card_jobs_status ON card_jobs(status, id);
CREATE INDEX card_jobs_person ON card_jobs(person_id, id);
