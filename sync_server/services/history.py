"""Balance and transaction history (流水查询), as the manual's web query page shows it.

    balance(conn, account_id)                        -> {wallets: {wallet: fen}, total_fen, cards: [...], ...}
    query(conn, account_id, from_date, to_date, kind="all", page=1, page_size=10)
        -> {rows, page, page_size, total_rows, total_pages, from_date, to_date, kind}
    recent(conn, account_id, kind="all", page=1, page_size=10)   -> the same over the longest range
                                                                     allowed, ending today

Dates are Beijing calendar dates ("YYYY-MM-DD", both ends included). `kind` is consumption (purchases
and fees), recharge (channel and cash recharges and their reversals 冲正, old-card balances moved in), water (用水: purchases
at merchants of the water category, whichever wallet paid, and the holds and releases of Bluetooth
water grants, which net to what a session drew) or all. Rows are newest first; each shows the place
(merchant, channel or fee, zh and en), the time, the signed amount (+ in, - out) and the balance
after it, of the wallet it touched and of all wallets together, and the merchant's `category`
("canteen", "water", "electricity"; "water" for a grant's hold and release too; None when no
merchant is involved). A multi-wallet payment (water, electricity) shows one row per wallet it drew
on, like the ledger holds it.

Balances after are running sums computed by SQLite window functions over the account's transfers, so
they are exact whatever the filter; movements between two wallets of one account count in the
running sums but are not listed (they change nothing for the holder).
"""
import datetime

from firmware.core import wallets as wallet_rules
from sync_server import db as dbmod, ledger, numbers
from sync_server.services import ServiceError, person_row, register_messages

KIND_ALL, KIND_CONSUMPTION, KIND_RECHARGE, KIND_WATER = "all", "consumption", "recharge", "water"
KINDS = (KIND_ALL, KIND_CONSUMPTION, KIND_RECHARGE, KIND_WATER)
_GRANT_KINDS = (ledger.KIND_HOLD, ledger.KIND_RELEASE)
TRANSFER_KINDS = {
    # a Bluetooth water grant's hold and the release of its rest net to what the session drew
    KIND_CONSUMPTION: (ledger.KIND_PURCHASE, ledger.KIND_FEE) + _GRANT_KINDS,
    # a cash recharge's reversal (冲正) is a correction: listed with the recharges it takes back
    KIND_RECHARGE: (ledger.KIND_RECHARGE, ledger.KIND_MIGRATION, ledger.KIND_CORRECTION),
    KIND_ALL: ledger.KINDS,
    KIND_WATER: _GRANT_KINDS,
}
# kinds that list, besides their TRANSFER_KINDS, the purchases at the merchants of one category
PURCHASE_CATEGORIES = {KIND_WATER: wallet_rules.CATEGORY_WATER}
# the `category` of a row: the merchant's (the categories that sell), and water for a grant's hold and release
CATEGORY_NAMES = {category: wallet_rules.CATEGORY_NAMES[category] for category in wallet_rules.WALLET_ORDER}
GRANT_CATEGORY = wallet_rules.CATEGORY_NAMES[wallet_rules.CATEGORY_WATER]
MAX_PAGE_SIZE = 100
MAX_RANGE_DAYS = 366
BEIJING = datetime.timezone(datetime.timedelta(hours=8))

register_messages({
    "bad_date": (400, "日期格式错误（应为 YYYY-MM-DD）", "dates are YYYY-MM-DD"),
    "bad_range": (400, "起止日期无效（起始日期不能晚于截止日期，跨度不超过 %d 天）",
                  "invalid date range (start after end, or longer than %d days)"),
    "bad_kind": (400, "查询类型应为 consumption、recharge、water 或 all",
                 "type must be consumption, recharge, water or all"),
    "bad_page": (400, "页码或每页条数无效", "invalid page or page size"),
})


def balance(conn, account_id):
    """What the top of the query page shows: name, number, per-wallet balances and the cards."""
    holder = person_row(conn, account_id)
    wallets = dict(conn.execute("SELECT la.wallet, b.balance_fen FROM ledger_accounts la JOIN balances b "
                                "ON b.ledger_account_id = la.id WHERE la.account_id = ?", (account_id,)))
    limits = conn.execute("SELECT single_limit_fen, daily_limit_fen FROM accounts WHERE id = ?",
                          (account_id,)).fetchone()
    cards = [dict(zip(("card_number", "generation", "status", "expiry_yyyymmdd"), row)) for row in conn.execute(
        "SELECT card_number, generation, status, expiry_yyyymmdd FROM cards WHERE account_id = ? "
        "ORDER BY generation DESC", (account_id,))]
    return {"account_id": account_id, "name": holder["name"], "staff_number": holder["staff_number"],
            "category": holder["category"], "wallets": wallets, "total_fen": sum(wallets.values()),
            "blocked": bool(holder["blocked"]), "in_debt": bool(holder["in_debt"]),
            "single_limit_fen": limits[0], "daily_limit_fen": limits[1], "cards": cards}


def day_bounds_ms(from_date, to_date):
    """[start, end) in ms of Beijing dates from_date..to_date inclusive."""
    start_date, end_date = numbers.parse_date(from_date), numbers.parse_date(to_date)
    if start_date is None or end_date is None:
        raise ServiceError("bad_date")
    start = datetime.datetime.combine(start_date, datetime.time(), BEIJING)
    end = datetime.datetime.combine(end_date, datetime.time(), BEIJING)
    if end < start or (end - start).days >= MAX_RANGE_DAYS:
        raise ServiceError("bad_range", MAX_RANGE_DAYS)
    return int(start.timestamp() * 1000), int((end + datetime.timedelta(days=1)).timestamp() * 1000)


# One row per wallet leg of each transfer touching the account; running sums over all of them (by
# transfer order, rowid), then the filter. `ROWS` frames: two legs of one transfer are distinct rows.
# The other side's merchant (none for a channel, the fee income or the hold account) gives the category.
_QUERY = """
WITH w(id, wallet) AS (SELECT id, wallet FROM ledger_accounts WHERE account_id = :account),
legs AS (
    SELECT t.rowid AS position, t.id AS transfer_id, t.kind, t.time_ms, t.reference, w.wallet,
           t.amount_fen AS signed_fen, t.debit_id AS other_id FROM transfers t JOIN w ON w.id = t.credit_id
    UNION ALL
    SELECT t.rowid, t.id, t.kind, t.time_ms, t.reference, w.wallet, -t.amount_fen, t.credit_id
    FROM transfers t JOIN w ON w.id = t.debit_id
),
running AS (
    SELECT legs.*,
        sum(signed_fen) OVER (PARTITION BY wallet ORDER BY position, signed_fen ROWS UNBOUNDED PRECEDING)
            AS wallet_balance_fen_after,
        sum(signed_fen) OVER (ORDER BY position, signed_fen ROWS UNBOUNDED PRECEDING) AS balance_fen_after
    FROM legs
)
SELECT %s FROM running JOIN ledger_accounts o ON o.id = running.other_id
LEFT JOIN merchants m ON m.ledger_account_id = o.id
WHERE o.account_id IS DISTINCT FROM :account AND running.time_ms >= :start AND running.time_ms < :end
    AND %s
"""
_COLUMNS = ("transfer_id", "running.kind", "running.time_ms", "reference", "running.wallet", "signed_fen",
            "wallet_balance_fen_after", "balance_fen_after", "o.name_zh", "o.name_en", "o.kind", "m.category")


def _filter(kind):
    """(the WHERE condition of `kind`, its parameters)."""
    kinds = TRANSFER_KINDS[kind]
    parameters = {"k%d" % index: value for index, value in enumerate(kinds)}
    condition = "running.kind IN (%s)" % ", ".join(":k%d" % index for index in range(len(kinds)))
    if kind in PURCHASE_CATEGORIES:
        condition = "(%s OR (running.kind = :purchase AND m.category = :category))" % condition
        parameters.update(purchase=ledger.KIND_PURCHASE, category=PURCHASE_CATEGORIES[kind])
    return condition, parameters


def query(conn, account_id, from_date, to_date, kind=KIND_ALL, page=1, page_size=10):
    """One page of the account's movements in the date range, newest first (see the module text)."""
    if kind not in TRANSFER_KINDS:
        raise ServiceError("bad_kind")
    if numbers.check_int(page, 1, numbers.MAX_PAGE) is None or numbers.check_int(page_size, 1, MAX_PAGE_SIZE) is None:
        raise ServiceError("bad_page")
    start_ms, end_ms = day_bounds_ms(from_date, to_date)
    from_date, to_date = numbers.parse_date(from_date).isoformat(), numbers.parse_date(to_date).isoformat()
    person_row(conn, account_id)
    condition, parameters = _filter(kind)
    parameters.update({"account": account_id, "start": start_ms, "end": end_ms})
    total_rows = conn.execute(_QUERY % ("count(*)", condition), parameters).fetchone()[0]
    total_pages = max(1, (total_rows + page_size - 1) // page_size)
    rows = conn.execute(_QUERY % (", ".join(_COLUMNS), condition) + " ORDER BY position DESC, signed_fen DESC "
                        "LIMIT :limit OFFSET :offset",
                        dict(parameters, limit=page_size, offset=(page - 1) * page_size)).fetchall()
    listing = []
    for (transfer_id, transfer_kind, time_ms, reference, wallet, signed_fen, wallet_after, total_after,
         place_zh, place_en, place_kind, merchant_category) in rows:
        listing.append({
            "transfer_id": transfer_id, "kind": transfer_kind,
            "type": KIND_CONSUMPTION if transfer_kind in TRANSFER_KINDS[KIND_CONSUMPTION] else
            KIND_RECHARGE if transfer_kind in TRANSFER_KINDS[KIND_RECHARGE] else "other",
            "time_ms": time_ms,
            "time": datetime.datetime.fromtimestamp(time_ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "place_zh": place_zh or "", "place_en": place_en or "", "place_kind": place_kind,
            "category": GRANT_CATEGORY if transfer_kind in _GRANT_KINDS else CATEGORY_NAMES.get(merchant_category),
            **_fee_place(transfer_kind, reference),
            "wallet": wallet, "amount_fen": signed_fen,
            "wallet_balance_fen_after": wallet_after, "balance_fen_after": total_after,
        })
    return {"rows": listing, "page": page, "page_size": page_size, "total_rows": total_rows,
            "total_pages": total_pages, "from_date": from_date, "to_date": to_date, "kind": kind}


def recent(conn, account_id, kind=KIND_ALL, page=1, page_size=10, now_ms=None):
    """The newest movements (query over the last MAX_RANGE_DAYS days up to today): the hall's views."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    return query(conn, account_id, today(now_ms - (MAX_RANGE_DAYS - 1) * 86400000), today(now_ms), kind, page,
                 page_size)


FEE_PLACES = {"reissue": ("补卡费", "card reissue fee")}
CORRECTION_PLACES = {"reversal": ("现金充值冲正", "cash recharge reversed")}


def _fee_place(transfer_kind, reference):
    """A fee shows what it was for, not the fee-income account it went to; a correction what it
    corrected (a reversal is not the cash desk paying in)."""
    if transfer_kind == ledger.KIND_FEE:
        zh, en = FEE_PLACES.get((reference or "").split(" ")[0], ("手续费", "fee"))
    elif transfer_kind == ledger.KIND_CORRECTION:
        zh, en = CORRECTION_PLACES.get((reference or "").split(" ")[0], ("更正", "correction"))
    else:
        return {}
    return {"place_zh": zh, "place_en": en}


def today(now_ms):
    return datetime.datetime.fromtimestamp(now_ms / 1000, BEIJING).strftime("%Y-%m-%d")
