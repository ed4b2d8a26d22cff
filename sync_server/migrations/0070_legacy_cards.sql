-- Go-live migration (sync_server/legacy_migration.py): every old-system card of the old card centre's
-- export, whose money moves into the ledger exactly once.

CREATE TABLE legacy_cards (
    serial INTEGER PRIMARY KEY,         -- the old card's 卡号
    person_id INTEGER REFERENCES persons(id),     -- NULL for a serial two people share (the hall decides)
    account_id INTEGER REFERENCES accounts(id),
    category INTEGER NOT NULL,          -- legacy_card.TEACHER / STUDENT / TEMPORARY
    export_fen INTEGER NOT NULL,        -- the main purse's balance in the export
    export_water_fen INTEGER,           -- the registered 小钱包's balance in the export; NULL: not registered
    state TEXT NOT NULL,                -- pending, activated, lost, duplicate
    imported_ms INTEGER NOT NULL,
    moved_main_fen INTEGER NOT NULL DEFAULT 0,     -- booked into the main wallet (teachers, at import)
    moved_legacy_fen INTEGER NOT NULL DEFAULT 0,   -- booked into the legacy wallet (students, at activation)
    moved_water_fen INTEGER NOT NULL DEFAULT 0,    -- booked into the water wallet (at activation)
    activated_ms INTEGER
);
CREATE INDEX legacy_cards_person ON legacy_cards(person_id);
CREATE INDEX legacy_cards_state ON legacy_cards(state);
