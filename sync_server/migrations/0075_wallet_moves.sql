-- Money moved between one holder's own wallets (sync_server/services/wallet_move.py): 圈存 main ->
-- water by the holder or a clerk, the old system's balance legacy -> main at the service hall. One
-- row per move, its receipt: the receipt number names the `wallet_move` transfer ("wm/<receipt_no>"),
-- and a repeat of the same request finds the row and books nothing.

CREATE TABLE wallet_moves (
    receipt_no TEXT PRIMARY KEY,        -- W + 24 hex (from the request id) or W<ms><12 hex>
    account_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    name TEXT NOT NULL,                 -- the holder's name and number when the move was made
    staff_number TEXT,
    from_wallet TEXT NOT NULL,          -- main, legacy
    to_wallet TEXT NOT NULL,            -- water, main
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    from_balance_fen_after INTEGER NOT NULL,
    to_balance_fen_after INTEGER NOT NULL,
    transfer_id TEXT NOT NULL UNIQUE,
    operator TEXT,                      -- the staff member at the hall; NULL: the holder, with the PIN
    staff_action_id INTEGER,            -- the staff action log's entry (staff_actions.id), hall moves only
    time_ms INTEGER NOT NULL
);
CREATE INDEX wallet_moves_account ON wallet_moves(account_id, time_ms);
