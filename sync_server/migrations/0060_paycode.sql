-- Payment codes (付款码, sync_server/paycode.py and firmware/core/paycode.py): the server's signing
-- keys (by id; the keys themselves derive from the site master key and are never stored), the phones'
-- credentials, the certificates issued for them, online claims and every use a terminal journaled.

CREATE TABLE paycode_keys (
    key_id INTEGER PRIMARY KEY,         -- 1..255, in the certificate
    created_ms INTEGER NOT NULL,
    retired_ms INTEGER                  -- no new certificate after this; still sent to terminals while
                                        -- certificates signed by it may be in date
);

CREATE TABLE paycode_credentials (
    id INTEGER PRIMARY KEY,             -- credential_id in certificates and records
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    app_user_id TEXT,                   -- the bound phone that enabled it
    public_key BLOB NOT NULL,           -- the phone's Ed25519 public key (32 bytes)
    status TEXT NOT NULL,               -- active, revoked
    revoked_reason INTEGER,             -- deny reason (ledger_store.REASON_*) when revoked
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE UNIQUE INDEX paycode_credentials_key ON paycode_credentials(public_key);
CREATE INDEX paycode_credentials_account ON paycode_credentials(account_id, status);

CREATE TABLE paycode_certificates (
    id INTEGER PRIMARY KEY,             -- cert_serial
    credential_id INTEGER NOT NULL REFERENCES paycode_credentials(id),
    key_id INTEGER NOT NULL,
    card_number INTEGER NOT NULL,
    card_generation INTEGER NOT NULL,
    expiry_min INTEGER NOT NULL,        -- minutes since the epoch
    offline_cap_fen INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX paycode_certificates_credential ON paycode_certificates(credential_id);

-- A POS online asks before it accepts: the first claim of (credential, minute, counter) wins, anywhere.
CREATE TABLE paycode_claims (
    credential_id INTEGER NOT NULL,
    time_step INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    terminal_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    claimed_ms INTEGER NOT NULL,
    PRIMARY KEY (credential_id, time_step, counter)
);

-- Every pay-code record stored from a terminal's batches. Two rows with one (credential, minute,
-- counter) are one code used twice (offline, at two terminals): both sales stand, the credential is
-- revoked and the day close lists them.
CREATE TABLE paycode_uses (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    credential_id INTEGER NOT NULL,
    time_step INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    account_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    offline INTEGER NOT NULL,
    used_ms INTEGER NOT NULL,           -- corrected time of the sale
    double_use INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (terminal_id, seq)
);
CREATE INDEX paycode_uses_code ON paycode_uses(credential_id, time_step, counter);
CREATE INDEX paycode_uses_time ON paycode_uses(used_ms);

INSERT INTO paycode_keys (key_id, created_ms) VALUES (1, 0);
INSERT INTO settings (name, value) VALUES
    ('paycode_cert_valid_ms', 604800000),   -- a certificate is good for 7 days; the app renews it online
    ('paycode_offline_cap_fen', 5000),      -- what one certificate may spend at one offline terminal
    ('paycode_skew_ms', 120000),            -- phone and terminal clocks may differ by this much
    ('paycode_credentials_per_account', 3); -- phones with the code enabled at once
