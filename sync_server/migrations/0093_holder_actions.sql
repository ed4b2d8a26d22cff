-- What cardholders did themselves (sync_server/services/holder_actions.py): loss reported, unfreeze,
-- PIN changed, limits set, phones bound and removed, wallet moves - in the portal or the phone app, each
-- row written in the transaction of its change. Staff actions stay in staff_actions; the service
-- hall's person page shows both, newest first. No PIN is ever written here.

CREATE TABLE holder_actions (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL,         -- persons.id
    account_id INTEGER NOT NULL,        -- accounts.id
    action TEXT NOT NULL,               -- report_loss, unfreeze, pin_change, limits, phone_bound, ...
    via TEXT NOT NULL,                  -- portal (网上服务大厅), app (手机), holder (not known)
    card_number INTEGER,
    amount_fen INTEGER,
    detail TEXT NOT NULL,               -- JSON
    time_ms INTEGER NOT NULL
);
CREATE INDEX holder_actions_person ON holder_actions(person_id, time_ms);
