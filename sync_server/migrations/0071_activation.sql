-- Activation units (激活机) and the go-live migration's tickets (sync_server/legacy_migration.py):
-- each old card that may be activated gets its new card at import (a `cards` row, status pending until
-- the card is activated), and what its purses held when an activation unit locked them.

ALTER TABLE legacy_cards ADD COLUMN card_number INTEGER;          -- the new card written at activation
ALTER TABLE legacy_cards ADD COLUMN card_generation INTEGER;
ALTER TABLE legacy_cards ADD COLUMN ticket_version INTEGER;       -- counters.ticket_version when last changed
ALTER TABLE legacy_cards ADD COLUMN card_main_fen INTEGER;        -- the locked main purse, as the card held it
ALTER TABLE legacy_cards ADD COLUMN card_main_counter INTEGER;
ALTER TABLE legacy_cards ADD COLUMN card_water_fen INTEGER;       -- the locked 小钱包
ALTER TABLE legacy_cards ADD COLUMN card_water_counter INTEGER;
ALTER TABLE legacy_cards ADD COLUMN activated_terminal_id INTEGER;   -- the unit whose record was booked
ALTER TABLE legacy_cards ADD COLUMN activated_seq INTEGER;
ALTER TABLE legacy_cards ADD COLUMN activated_via TEXT;           -- unit (a unit's record) or hall (the export's figures)
ALTER TABLE legacy_cards ADD COLUMN activation_records INTEGER NOT NULL DEFAULT 0;  -- records seen for the serial
CREATE INDEX legacy_cards_ticket_version ON legacy_cards(ticket_version);
INSERT INTO counters (name, value) VALUES ('ticket_version', 0);
