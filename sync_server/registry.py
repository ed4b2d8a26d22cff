"""The registry: merchants, people and their accounts, cards, terminals, and the plain cash recharge
and loss report on them - the operations the services (sync_server/services/), the hall pages and the
CLI build on, on a database connection.

Each operation runs in its own transaction unless the caller already holds one, so the CLI, the hall
pages and the demo share the same code. Money moves only through `ledger.post`; card loss and
terminal revocation become deny entries that terminals fetch as deltas. Nothing here prints: the CLI
(sync_server/cli.py) formats results. Key material appears only in `provisioning_document`, whose
result the CLI writes to a 0600 file and never shows.
"""
import datetime
import random
import uuid

from firmware.core import card_layout, protocol, sam as sam_keys
from firmware.core import wallets as wallet_rules
from sync_server import db as dbmod, ledger, pin_rules
from sync_server.ledger_store import (SqliteStore, add_deny_entries, touch_accounts, update_debt_flags,
                                      REASON_LOST, REASON_REPLACED, REASON_REVOKED, REASON_FOUND)
from sync_server.messages import BilingualError

MAX_POPULATION = 200000
CARD_VALID_YEARS = {card_layout.HOLDER_STUDENT: 5, card_layout.HOLDER_TEMPORARY: 1}
DEFAULT_CARD_VALID_YEARS = 10


class HallError(BilingualError):
    """An operation the hall cannot do: carries a messages-style (zh, en) pair."""


_tx = dbmod.joined_transaction


# --- merchants -----------------------------------------------------------------------------------

def add_merchant(conn, name_zh, name_en, category):
    if category not in wallet_rules.MERCHANT_CATEGORIES:
        raise HallError("未知的商户类别 %s" % category, "unknown merchant category %s" % category)
    with _tx(conn):
        ledger_id = conn.execute("INSERT INTO ledger_accounts (kind, name_zh, name_en) VALUES ('merchant', ?, ?) RETURNING id",
                                 (name_zh, name_en)).fetchone()[0]
        conn.execute("INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, 0)", (ledger_id,))
        merchant_id = conn.execute("INSERT INTO merchants (name_zh, name_en, category, ledger_account_id) "
                                   "VALUES (?, ?, ?, ?) RETURNING id", (name_zh, name_en, category, ledger_id)).fetchone()[0]
        conn.execute("UPDATE ledger_accounts SET merchant_id = ? WHERE id = ?", (merchant_id, ledger_id))
    return merchant_id


# --- persons and accounts ------------------------------------------------------------------------

def rename_merchant(conn, merchant_id, name_zh, name_en):
    """New names for a merchant and its ledger account (statements and reports show them); the caller
    holds the transaction. Returns {"before": [zh, en], "after": [zh, en]} for the action log."""
    row = conn.execute("SELECT name_zh, name_en, ledger_account_id FROM merchants WHERE id = ?"
                       + dbmod.for_update(conn), (merchant_id,)).fetchone()
    if row is None:
        raise HallError("商户 %d 不存在" % merchant_id, "merchant %d does not exist" % merchant_id)
    conn.execute("UPDATE merchants SET name_zh = ?, name_en = ? WHERE id = ?", (name_zh, name_en, merchant_id))
    conn.execute("UPDATE ledger_accounts SET name_zh = ?, name_en = ? WHERE id = ?", (name_zh, name_en, row[2]))
    return {"before": [row[0], row[1]], "after": [name_zh, name_en]}


def _create_account_rows(conn, person_id, single_limit_fen, daily_limit_fen, now_ms):
    account_id = conn.execute("INSERT INTO accounts (person_id, single_limit_fen, daily_limit_fen, created_ms) "
                              "VALUES (?, ?, ?, ?) RETURNING id", (person_id, single_limit_fen, daily_limit_fen, now_ms)).fetchone()[0]
    for wallet in protocol.WALLETS:
        ledger_id = conn.execute("INSERT INTO ledger_accounts (kind, account_id, wallet) VALUES ('wallet', ?, ?) RETURNING id",
                                 (account_id, wallet)).fetchone()[0]
        conn.execute("INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, 0)", (ledger_id,))
    return account_id


def add_person(conn, name, category, id_number=None, staff_number=None, single_limit_fen=None,
               daily_limit_fen=None, now_ms=None, set_initial_pin=True):
    """Create a person with one account and its three wallets; returns (person_id, account_id)."""
    if category not in card_layout.HOLDER_CATEGORIES:
        raise HallError("未知的持卡人类别", "unknown holder category")
    if not (id_number or staff_number):
        raise HallError("需要身份证号或学工号", "an ID number or a staff/student number is required")
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        single_limit_fen = single_limit_fen or dbmod.setting(conn, "default_single_limit_fen")
        daily_limit_fen = daily_limit_fen or dbmod.setting(conn, "default_daily_limit_fen")
        if staff_number and conn.execute("SELECT 1 FROM persons WHERE staff_number = ?", (staff_number,)).fetchone():
            raise HallError("学工号 %s 已存在" % staff_number, "staff/student number %s exists" % staff_number)
        person_id = conn.execute("INSERT INTO persons (name, id_number, staff_number, category, created_ms) "
                                 "VALUES (?, ?, ?, ?, ?) RETURNING id", (name, id_number, staff_number, category, now_ms)).fetchone()[0]
        account_id = _create_account_rows(conn, person_id, single_limit_fen, daily_limit_fen, now_ms)
        touch_accounts(conn, [account_id])
        if set_initial_pin:
            pin_rules.ensure_pin(conn, account_id)
    return person_id, account_id


def _resolve_account(conn, person_or_account):
    """An account id from an int (account id) or a mapping with account_id or person_id."""
    if isinstance(person_or_account, int):
        account_id = person_or_account
    elif person_or_account.get("account_id"):
        account_id = person_or_account["account_id"]
    else:
        row = conn.execute("SELECT id FROM accounts WHERE person_id = ? ORDER BY id LIMIT 1",
                           (person_or_account["person_id"],)).fetchone()
        account_id = row[0] if row else None
    row = conn.execute("SELECT a.id, p.name, p.category FROM accounts a JOIN persons p ON p.id = a.person_id "
                       "WHERE a.id = ?", (account_id,)).fetchone()
    if row is None:
        raise HallError("账户不存在", "unknown account")
    return row


def _expiry(category, now_ms):
    today = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone(datetime.timedelta(hours=8))).date()
    years = CARD_VALID_YEARS.get(category, DEFAULT_CARD_VALID_YEARS)
    return (today.year + years) * 10000 + today.month * 100 + min(today.day, 28)


card_expiry = _expiry        # a new card's default expiry for its holder category, from now_ms


def issue_card_record(conn, person_or_account, uid, now_ms=None, expiry_yyyymmdd=None):
    """Allocate a card for an account and store it; returns (card_layout.Identity, holder name).

    A first card gets a new card number, generation 1. A replacement keeps the card number with the
    next generation; the previous card is marked replaced and denied (terminals refuse it).
    The caller writes the card (firmware/apps/card_io.issue_card) with what this returns.
    """
    uid = bytes(uid)
    if len(uid) not in (4, 7):
        raise HallError("卡片UID长度错误", "card UID must be 4 or 7 bytes")
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        account_id, name, category = _resolve_account(conn, person_or_account)
        # identity-only cards are issued the same way: they carry an account id, just no money
        previous = conn.execute("SELECT card_number, generation FROM cards WHERE account_id = ? "
                                "ORDER BY generation DESC LIMIT 1", (account_id,)).fetchone()
        if previous is None:
            card_number = dbmod.next_counter(conn, "card_number")
            generation = 1
        else:
            card_number, generation = previous[0], previous[1] + 1
            if generation > 255:
                raise HallError("补卡次数超过上限", "card generation limit reached")
            # a pending card (an old card's activation ticket, legacy_migration.py) is replaced too
            replaced = conn.execute("SELECT generation FROM cards WHERE card_number = ? AND status IN "
                                    "('active', 'lost', 'pending')", (card_number,)).fetchall()
            conn.execute("UPDATE cards SET status = 'replaced' WHERE card_number = ? AND status IN "
                         "('active', 'lost', 'pending')", (card_number,))
            add_deny_entries(conn, [(protocol.DENY_CARD, protocol.card_deny_ref(card_number, row[0]), 1,
                                     REASON_REPLACED) for row in replaced], now_ms)
        # a registry expiry (temporary cards, sync_server/services/people_import.py) wins over the default
        expiry_yyyymmdd = expiry_yyyymmdd or conn.execute(
            "SELECT p.expiry_yyyymmdd FROM persons p JOIN accounts a ON a.person_id = p.id WHERE a.id = ?",
            (account_id,)).fetchone()[0] or _expiry(category, now_ms)
        conn.execute("INSERT INTO cards (card_number, generation, account_id, uid, status, holder_category, "
                     "expiry_yyyymmdd, issued_ms) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
                     (card_number, generation, account_id, uid, category, expiry_yyyymmdd, now_ms))
    return card_layout.Identity(card_number, account_id, generation, category, expiry_yyyymmdd), name


# --- money ---------------------------------------------------------------------------------------

def wallet_ledger_id(conn, account_id, wallet):
    row = conn.execute("SELECT id FROM ledger_accounts WHERE account_id = ? AND wallet = ?",
                       (account_id, wallet)).fetchone()
    if row is None:
        raise HallError("账户不存在", "unknown account")
    return row[0]


def balances_of(conn, account_id):
    """{wallet: balance_fen} of an account."""
    return dict(conn.execute("SELECT la.wallet, b.balance_fen FROM ledger_accounts la JOIN balances b "
                             "ON b.ledger_account_id = la.id WHERE la.account_id = ?", (account_id,)))


def recharge(conn, account_id, amount_fen, wallet=protocol.WALLET_MAIN, channel=dbmod.LEDGER_CASH_DESK,
             transfer_id=None, now_ms=None, reference=None):
    """Move money from a recharge channel into a wallet; returns the wallet balance after.

    With a `transfer_id` the call is idempotent (a retried recharge books once). An account blocked
    for a negative balance is unblocked when every wallet is back to zero or above.
    """
    if type(amount_fen) is not int or not 0 < amount_fen <= ledger.MAX_TRANSFER_FEN:
        raise HallError("充值金额无效", "invalid recharge amount")
    if wallet not in protocol.WALLETS:
        raise HallError("未知钱包", "unknown wallet")
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    transfer_id = transfer_id or "r/%s" % uuid.uuid4().hex
    with _tx(conn):
        target = wallet_ledger_id(conn, account_id, wallet)
        transfer = ledger.recharge_transfer(transfer_id, channel, target, amount_fen, now_ms, reference)
        try:
            ledger.post(SqliteStore(conn), [transfer])
        except ledger.TransferError as error:
            raise HallError("充值被拒绝：%s" % error, "recharge refused: %s" % error)
        after = balances_of(conn, account_id)
        ids = {w: wallet_ledger_id(conn, account_id, w) for w in after}
        in_debt, clear = ledger.accounts_in_debt({ids[w]: fen for w, fen in after.items()}, {account_id: ids})
        update_debt_flags(conn, in_debt, clear, now_ms)
        touch_accounts(conn, [account_id])
    return after[wallet]


# --- loss ----------------------------------------------------------------------------------------

def report_loss(conn, card_number, now_ms=None):
    """Mark the card's active generation lost and deny it; returns the new deny version."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        row = conn.execute("SELECT generation FROM cards WHERE card_number = ? AND status = 'active'",
                           (card_number,)).fetchone()
        if row is None:
            raise HallError("卡号 %d 没有可挂失的卡" % card_number, "card %d has no active card to report" % card_number)
        conn.execute("UPDATE cards SET status = 'lost' WHERE card_number = ? AND generation = ?",
                     (card_number, row[0]))
        add_deny_entries(conn, [(protocol.DENY_CARD, protocol.card_deny_ref(card_number, row[0]), 1, REASON_LOST)],
                         now_ms)
        return conn.execute("SELECT max(version) FROM deny_entries").fetchone()[0]


def cancel_loss(conn, card_number, now_ms=None):
    """解挂: a lost card was found; lift its deny entry. Returns the new deny version."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        row = conn.execute("SELECT generation FROM cards WHERE card_number = ? AND status = 'lost'",
                           (card_number,)).fetchone()
        if row is None:
            raise HallError("卡号 %d 未挂失" % card_number, "card %d is not reported lost" % card_number)
        conn.execute("UPDATE cards SET status = 'active' WHERE card_number = ? AND generation = ?",
                     (card_number, row[0]))
        add_deny_entries(conn, [(protocol.DENY_CARD, protocol.card_deny_ref(card_number, row[0]), 0, REASON_FOUND)],
                         now_ms)
        return conn.execute("SELECT max(version) FROM deny_entries").fetchone()[0]


# --- terminals -----------------------------------------------------------------------------------

def register_terminal(conn, merchant_id, now_ms=None, location=None):
    """A new active terminal of the merchant; `location` is where it stands, as
    terminal_settings.clean_location leaves it (None: not recorded). Returns its id."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        if conn.execute("SELECT 1 FROM merchants WHERE id = ?", (merchant_id,)).fetchone() is None:
            raise HallError("商户 %d 不存在" % merchant_id, "merchant %d does not exist" % merchant_id)
        return conn.execute("INSERT INTO terminals (merchant_id, key_version, status, created_ms, location) "
                            "VALUES (?, 1, 'active', ?, ?) RETURNING id", (merchant_id, now_ms, location)).fetchone()[0]


def revoke_terminal(conn, terminal_id, now_ms=None):
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        changed = conn.execute("UPDATE terminals SET status = 'revoked' WHERE id = ? AND status = 'active'",
                               (terminal_id,)).rowcount
        if not changed:
            raise HallError("终端 %d 不存在或已停用" % terminal_id, "terminal %d unknown or already revoked" % terminal_id)
        add_deny_entries(conn, [(protocol.DENY_TERMINAL, terminal_id, 1, REASON_REVOKED)], now_ms)


def rotate_terminal_key(conn, terminal_id, now_ms=None):
    """Start moving a terminal to a new key (sync_server/key_rotation.py): returns the new key_version.

    Its next sync answer carries the new keys sealed to that request's one-time public key; the first
    sync signed with them retires the old key. Asking again while a rotation is pending changes
    nothing (the same new version: the terminal may already hold it)."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with _tx(conn):
        row = conn.execute("SELECT key_version, next_key_version, status FROM terminals WHERE id = ?"
                           + dbmod.for_update(conn), (terminal_id,)).fetchone()
        if row is None or row[2] != "active":
            raise HallError("终端 %d 不存在或已停用" % terminal_id, "terminal %d unknown or revoked" % terminal_id)
        if row[1] is not None:
            return row[1]
        conn.execute("UPDATE terminals SET next_key_version = ?, next_key_asked_ms = ? WHERE id = ?",
                     (row[0] + 1, now_ms, terminal_id))
        return row[0] + 1


LEGACY_MASTER = "legacy_master"     # provisioning purpose name of the old system's master key


def provisioning_document(conn, master_key, terminal_id, server_url, legacy_master_key=None):
    """What a terminal needs to start: its id, merchant, server URL and the keys for its SAM.

    `sam_keys` maps firmware.core.sam purpose names to hex keys, so a terminal builds its key holder
    with SoftwareSAM({purpose: bytes.fromhex(hex)}). Contains secrets: write with mode 0600 only.
    An activation unit (merchant category CATEGORY_ACTIVATION) writes new cards, so it gets the
    issuer's keys, and the old system's master key (`legacy_master`) to open and lock old purses.
    """
    row = dbmod.fetch_named(conn, "SELECT t.id, t.merchant_id, t.key_version, t.status, m.category, m.name_zh, "
                            "m.name_en FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = ?",
                            (terminal_id,))
    if row is None or row["status"] != "active":
        raise HallError("终端 %d 不存在或已停用" % terminal_id, "terminal %d unknown or revoked" % terminal_id)
    activation = row["category"] == wallet_rules.CATEGORY_ACTIVATION
    if activation and legacy_master_key is None:
        raise HallError("激活机需要旧系统主密钥：请先运行 ykt hall migration-import --old-keys",
                        "an activation unit needs the old system's master key: import it first "
                        "(ykt hall migration-import --old-keys)")
    keys = sam_keys.site_purpose_keys(master_key, include_issuer=activation)
    if activation:
        keys[LEGACY_MASTER] = legacy_master_key
    keys[sam_keys.TERMINAL] = sam_keys.terminal_key(master_key, terminal_id, row["key_version"])
    if row["category"] == wallet_rules.CATEGORY_WATER:
        keys[sam_keys.WATER] = sam_keys.water_key(master_key, terminal_id, row["key_version"])
    return {
        "terminal_id": terminal_id,
        "merchant_id": row["merchant_id"],
        "merchant_name_zh": row["name_zh"],
        "merchant_name_en": row["name_en"],
        "category": row["category"],
        "key_version": row["key_version"],
        "server_url": server_url,
        "sam_keys": {purpose: key.hex() for purpose, key in sorted(keys.items())},
        # the public halves of the site's release keys: the only signatures a firmware update may carry
        "release_keys": [row[0] for row in conn.execute("SELECT public_hex FROM release_keys "
                                                        "ORDER BY added_ms, public_hex")],
    }


# --- bulk population for the demo ----------------------------------------------------------------

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬鹏辉斌宇浩凯健俊帆雪琳晨欣怡"


def provision_population(conn, count, seed, initial_balance_fen=20000, now_ms=None):
    """Create `count` students with accounts, cards (UIDs derived from the seed) and an opening cash
    recharge each. Deterministic for a seed. Returns a list of dicts: person_id, account_id, name,
    staff_number, identity (card_layout.Identity), uid (bytes).

    Initial PINs are hashed lazily on first use (pin_rules.ensure_pin) so thousands of people take a second.
    """
    assert 0 < count <= MAX_POPULATION
    rng = random.Random(seed)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    people = []
    with _tx(conn):
        single = dbmod.setting(conn, "default_single_limit_fen")
        daily = dbmod.setting(conn, "default_daily_limit_fen")
        first_number = dbmod.next_counter(conn, "card_number", count)
        used_uids = {bytes(row[0]) for row in conn.execute("SELECT uid FROM cards")}
        category = card_layout.HOLDER_STUDENT
        expiry = _expiry(category, now_ms)
        for index in range(count):
            name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))
            staff_number = "S%d%06d" % (seed % 1000, index + 1)
            while True:
                uid = bytes([rng.randrange(256) for _ in range(4)])
                if uid not in used_uids and uid[0] != 0x88:   # 0x88 is the cascade tag, never a UID0
                    used_uids.add(uid)
                    break
            person_id = conn.execute("INSERT INTO persons (name, id_number, staff_number, category, created_ms) "
                                     "VALUES (?, NULL, ?, ?, ?) RETURNING id", (name, staff_number, category, now_ms)).fetchone()[0]
            account_id = _create_account_rows(conn, person_id, single, daily, now_ms)
            card_number = first_number + index
            conn.execute("INSERT INTO cards (card_number, generation, account_id, uid, status, holder_category, "
                         "expiry_yyyymmdd, issued_ms) VALUES (?, 1, ?, ?, 'active', ?, ?, ?)",
                         (card_number, account_id, uid, category, expiry, now_ms))
            people.append({"person_id": person_id, "account_id": account_id, "name": name,
                           "staff_number": staff_number, "uid": uid,
                           "identity": card_layout.Identity(card_number, account_id, 1, category, expiry)})
        store = SqliteStore(conn)
        wallet_ids = store.wallet_ids([p["account_id"] for p in people])
        step = ledger.MAX_TRANSFERS_PER_POST
        for start in range(0, len(people) if initial_balance_fen > 0 else 0, step):
            ledger.post(store, [ledger.recharge_transfer("r/pop/%d/%d" % (seed, p["account_id"]),
                                                         dbmod.LEDGER_CASH_DESK,
                                                         wallet_ids[p["account_id"]][protocol.WALLET_MAIN],
                                                         initial_balance_fen, now_ms, "opening balance")
                                for p in people[start:start + step]])
        touch_accounts(conn, [p["account_id"] for p in people])
    return people
