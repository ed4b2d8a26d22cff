-- Dorm electricity by building, floor and room picked from lists the service hall maintains
-- (sync_server/services/electricity.py), and the outbox of payments owed to a dorm meter system
-- (sync_server/meter_gateway.py).
--
-- dorm_buildings / dorm_rooms: `ykt hall rooms-import` (楼栋,楼层,房间,电表号) fills them, `building-set`
-- names a building and says whether it has a meter system; a payment must name an active room of an
-- active building. Nothing is deleted: a room or building that stops taking payments is deactivated.
--
-- meter_outbox: one row per payment for a room whose building has an online meter system, written in
-- the same transaction as the payment's ledger transfers; the delivery loop sends it to the gateway
-- with the payment id as the gateway's idempotency key and marks it delivered on the answer.

CREATE TABLE dorm_buildings (
    code TEXT PRIMARY KEY,              -- 楼栋 as the hall writes it in the rooms file: 南1, 西山1
    name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL,
    campus TEXT NOT NULL DEFAULT '',    -- 南校区
    meter_system TEXT NOT NULL DEFAULT 'none' CHECK (meter_system IN ('none', 'online')),
                                        -- none: the old 购电机 (paid here, booked only); online: the
                                        -- payment is sent to the building's meter gateway
    kinds TEXT NOT NULL DEFAULT 'lighting',   -- comma list of what can be paid: lighting, aircon
    active INTEGER NOT NULL DEFAULT 1,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE dorm_rooms (
    building TEXT NOT NULL,             -- dorm_buildings.code
    floor INTEGER NOT NULL,
    room TEXT NOT NULL,
    meter_id TEXT,                      -- the meter system's id of the room's meter; NULL: none known
    active INTEGER NOT NULL DEFAULT 1,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (building, floor, room)
);
CREATE UNIQUE INDEX dorm_rooms_meter ON dorm_rooms(meter_id);
ALTER TABLE electricity_payments ADD COLUMN kind TEXT NOT NULL DEFAULT 'lighting';
CREATE INDEX electricity_payments_room ON electricity_payments(building, floor, room, time_ms);
CREATE TABLE meter_outbox (
    payment_id TEXT PRIMARY KEY,        -- electricity_payments.payment_id, the gateway's idempotency key
    building TEXT NOT NULL,             -- picks the gateway (meter_gateways.json in the data directory)
    meter_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
                                        -- failed: out of attempts or refused, flagged for staff
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,   -- due from then; a claimed row is leased until then
    last_error TEXT,
    gateway_ref TEXT,                   -- the meter system's reference for the credit
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER
);
CREATE INDEX meter_outbox_due ON meter_outbox(status, next_attempt_ms);
