-- Records whose card is not the named account's: stored, not booked (sync_server/ingest.py).
CREATE TABLE card_mismatches (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    card_number INTEGER NOT NULL,
    card_generation INTEGER NOT NULL,
    named_account_id INTEGER NOT NULL,  -- the account the record would have debited
    owner_account_id INTEGER,           -- the card's real account, NULL when the card is nobody's
    amount_fen INTEGER NOT NULL,
    noticed_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, seq)
);
ALTER TABLE terminals ADD COLUMN card_mismatch_count INTEGER NOT NULL DEFAULT 0;  -- > 0: flagged
