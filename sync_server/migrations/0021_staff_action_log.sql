-- Who did what, when, to whom: every staff action on a web page; the id is the receipt number.

CREATE TABLE staff_actions (
    id INTEGER PRIMARY KEY,
    staff_user_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,               -- recharge, reissue, unfreeze, report_loss
    person_id INTEGER,
    account_id INTEGER,
    card_number INTEGER,
    amount_fen INTEGER,
    detail TEXT,                        -- JSON
    time_ms INTEGER NOT NULL
);
CREATE INDEX staff_actions_person ON staff_actions(person_id);
CREATE INDEX staff_actions_staff ON staff_actions(staff_user_id);
