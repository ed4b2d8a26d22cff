"""The double-entry ledger, as a pure module (no SQL, no clock): the rules money moves by.

Discipline (after TigerBeetle): a transfer is immutable and moves `amount_fen > 0` from one ledger
account (debit) to another (credit). There is at most one transfer per id; posting an id again changes
nothing. Mistakes are corrected by new transfers, never by edits. Balances are derived: the cached
balance of each account must always equal what `derive_balances` computes from the transfers, and
`check_balances` proves it.

Sign convention: balance = sum(credits) - sum(debits). A transfer lowers its debit account and raises
its credit account by the same amount, so the sum over all accounts is zero, always. Consequently
    - a cardholder wallet is positive when the holder has money to spend (what we owe them),
    - a merchant account grows with its sales (what we owe the merchant),
    - the cash desk / recharge channels go negative by what they took in (money held outside).

Posting rules implemented here:
    purchase   record -> one transfer per wallet part (firmware.core.wallets order, shortfall
               allowed because the terminal already accepted the tap), wallet -> merchant
    recharge   channel (cash desk, online) -> wallet
    migration  legacy source -> legacy wallet (old-system card balance moved once)
    fee        wallet (or cash desk) -> fee income (reissue fee, sync_server/services/cards.py)
    hold       wallet -> hold account, release: hold account -> wallet (Bluetooth water grants,
               sync_server/water_holds.py)
    wallet_move  one wallet -> another wallet of the same account (圈存 main -> water, the old
               system's balance legacy -> main at the hall; sync_server/services/wallet_move.py)

Persistence goes through a small store interface (see `Store`), implemented on SQLite in
`sync_server/ledger_store.py` inside the caller's transaction.
"""
from collections import namedtuple

from firmware.core import wallets as wallet_rules

Transfer = namedtuple("Transfer", "id debit_id credit_id amount_fen kind reference time_ms")

KIND_PURCHASE = "purchase"
KIND_RECHARGE = "recharge"
KIND_MIGRATION = "migration"
KIND_CORRECTION = "correction"
KIND_FEE = "fee"                 # a service charge (reissue fee): wallet or cash desk -> fee income
KIND_HOLD = "hold"               # a Bluetooth water grant's money set aside: wallet -> hold account
KIND_RELEASE = "release"         # what a grant did not use given back: hold account -> wallet
KIND_WALLET_MOVE = "wallet_move"  # one holder's money between two of their own wallets (services/wallet_move.py)
KINDS = (KIND_PURCHASE, KIND_RECHARGE, KIND_MIGRATION, KIND_CORRECTION, KIND_FEE, KIND_HOLD, KIND_RELEASE,
         KIND_WALLET_MOVE)

MAX_TRANSFER_FEN = 100000000     # 1,000,000 yuan: anything above is a typo or an attack
MAX_TRANSFERS_PER_POST = 10000   # bound on one posting call (a sync batch is far smaller)


class TransferError(ValueError):
    """A transfer that must not be posted (bad amount, same account on both sides, reused id...)."""


class Store:
    """What posting needs from storage. All calls happen inside one caller-owned transaction.

    existing_ids(ids) -> {id: Transfer}    transfers already stored among `ids`
    insert_transfers(transfers)            plain insert; MUST fail on a duplicate id
    balances(ledger_ids) -> {id: fen}      cached balances (0 for an account with none yet)
    set_balances({id: fen})                replace cached balances
    add_to_balances({id: fen})             add signed amounts to cached balances (rows must exist)
    wallet_ids(account_ids) -> {account_id: {wallet: ledger_id}}
    all_transfers() -> iterable of Transfer
    all_balances() -> {id: fen}
    """


def validate(transfer):
    if not isinstance(transfer.id, str) or not transfer.id:
        raise TransferError("transfer id must be a non-empty string")
    if transfer.kind not in KINDS:
        raise TransferError("unknown transfer kind %r" % (transfer.kind,))
    if type(transfer.amount_fen) is not int or not 0 < transfer.amount_fen <= MAX_TRANSFER_FEN:
        raise TransferError("amount_fen out of range: %r" % (transfer.amount_fen,))
    if transfer.debit_id == transfer.credit_id:
        raise TransferError("debit and credit are the same account")
    if type(transfer.time_ms) is not int:
        raise TransferError("time_ms must be an integer")


def apply(balances, transfers):
    """Move money in the `balances` dict {ledger_id: fen} (mutated); returns the ids touched."""
    touched = set()
    for transfer in transfers:
        balances[transfer.debit_id] = balances.get(transfer.debit_id, 0) - transfer.amount_fen
        balances[transfer.credit_id] = balances.get(transfer.credit_id, 0) + transfer.amount_fen
        touched.add(transfer.debit_id)
        touched.add(transfer.credit_id)
    return touched


def derive_balances(transfers):
    """Balances computed from scratch from every transfer."""
    balances = {}
    apply(balances, transfers)
    return balances


def post(store, transfers):
    """Post transfers idempotently: returns the list actually posted (ids not seen before).

    Re-posting a stored id with the same content is a no-op; the same id with different content is
    an error (an id names one movement forever).
    """
    transfers = list(transfers)
    if len(transfers) > MAX_TRANSFERS_PER_POST:
        raise TransferError("too many transfers in one post")
    unique = {}
    for transfer in transfers:
        validate(transfer)
        earlier = unique.get(transfer.id)
        if earlier is not None and earlier != transfer:
            raise TransferError("transfer id %s used for two different movements" % transfer.id)
        unique[transfer.id] = transfer
    existing = store.existing_ids(list(unique))
    for transfer_id, stored in existing.items():
        if stored != unique[transfer_id]:
            raise TransferError("transfer id %s already names a different movement" % transfer_id)
    new = [t for t in unique.values() if t.id not in existing]
    if not new:
        return []
    involved = set()
    for transfer in new:
        involved.add(transfer.debit_id)
        involved.add(transfer.credit_id)
    balances = store.balances(sorted(involved))
    apply(balances, new)
    store.insert_transfers(new)
    store.set_balances(balances)
    return new


# --- posting rules -------------------------------------------------------------------------------

def purchase_transfer_id(terminal_id, seq, part):
    return "p/%d/%d/%d" % (terminal_id, seq, part)


def recharge_transfer(transfer_id, source_ledger_id, wallet_ledger_id, amount_fen, time_ms, reference=None):
    return Transfer(transfer_id, source_ledger_id, wallet_ledger_id, amount_fen, KIND_RECHARGE,
                    reference, time_ms)


Purchase = namedtuple("Purchase", "terminal_id seq time_ms account_id category amount_fen merchant_ledger_id")


def fixed_transfers(wallet_ids, purchase):
    """The transfers of a purchase when they cannot depend on balances (a one-wallet category such as
    the canteen), else None. Lets the server build them before it takes the write lock.

    `wallet_ids` is {wallet: ledger_id} of the cardholder.
    """
    order = wallet_rules.WALLET_ORDER[purchase.category]
    if len(order) != 1:
        return None
    return [Transfer(purchase_transfer_id(purchase.terminal_id, purchase.seq, 0), wallet_ids[order[0]],
                     purchase.merchant_ledger_id, purchase.amount_fen, KIND_PURCHASE,
                     "%d/%d" % (purchase.terminal_id, purchase.seq), purchase.time_ms)]


def plan_purchase(balances, wallet_ids, purchase, fixed=None):
    """Transfers for one accepted tap, applied to `balances` at once so the next tap sees them.

    `wallet_ids` is {wallet: ledger_id} of the cardholder; `fixed` is what fixed_transfers() gave for
    this purchase, when the caller computed it earlier. The split follows the shared wallet order; the
    last wallet may go negative (the tap was already accepted, perhaps offline).
    """
    planned = fixed if fixed is not None else fixed_transfers(wallet_ids, purchase)
    if planned is None:
        order = wallet_rules.WALLET_ORDER[purchase.category]
        wallet_balances = {wallet: balances.get(wallet_ids[wallet], 0) for wallet in order}
        parts = wallet_rules.split_debit(wallet_balances, purchase.category, purchase.amount_fen,
                                         allow_shortfall=True)
        reference = "%d/%d" % (purchase.terminal_id, purchase.seq)
        planned = [Transfer(purchase_transfer_id(purchase.terminal_id, purchase.seq, index), wallet_ids[wallet],
                            purchase.merchant_ledger_id, fen, KIND_PURCHASE, reference, purchase.time_ms)
                   for index, (wallet, fen) in enumerate(parts)]
    for transfer in planned:   # apply() inlined: this runs once per record under the write lock
        balances[transfer.debit_id] = balances.get(transfer.debit_id, 0) - transfer.amount_fen
        balances[transfer.credit_id] = balances.get(transfer.credit_id, 0) + transfer.amount_fen
    return planned


def plan_purchases(balances, wallet_ids, purchases, fixed=None):
    """Plan purchases in order against `balances` (mutated); returns all their transfers.

    `wallet_ids` is {account_id: {wallet: ledger_id}}; `fixed`, when given, is parallel to `purchases`
    (fixed_transfers() results, None where the split needs balances).
    """
    assert len(purchases) <= MAX_TRANSFERS_PER_POST
    assert fixed is None or len(fixed) == len(purchases)
    transfers = []
    for index, purchase in enumerate(purchases):
        assert 0 < purchase.amount_fen <= MAX_TRANSFER_FEN
        transfers.extend(plan_purchase(balances, wallet_ids[purchase.account_id], purchase,
                                       None if fixed is None else fixed[index]))
    return transfers


def balance_changes(transfers):
    """{ledger_id: signed fen} the transfers add to each balance they touch."""
    changes = {}
    for transfer in transfers:
        changes[transfer.debit_id] = changes.get(transfer.debit_id, 0) - transfer.amount_fen
        changes[transfer.credit_id] = changes.get(transfer.credit_id, 0) + transfer.amount_fen
    return changes


def touched_ids(transfers):
    """Ledger accounts whose balance the transfers change."""
    touched = {transfer.debit_id for transfer in transfers}
    touched.update(transfer.credit_id for transfer in transfers)
    return touched


def book_purchases(store, purchases):
    """Post a batch of purchases known to be new (each (terminal, seq) stored for the first time).

    Loads every involved balance once, plans in order, inserts in one go. Returns
    (transfers, balances_after {ledger_id: fen}, wallet_ids {account_id: {wallet: ledger_id}}).
    A purchase id reused would make insert_transfers fail and the caller's transaction roll back,
    so nothing is ever booked twice.
    """
    assert len(purchases) <= MAX_TRANSFERS_PER_POST
    if not purchases:
        return [], {}, {}
    wallet_ids = store.wallet_ids(sorted({p.account_id for p in purchases}))
    involved = {p.merchant_ledger_id for p in purchases}
    for ids in wallet_ids.values():
        involved.update(ids.values())
    balances = store.balances(sorted(involved))
    transfers = plan_purchases(balances, wallet_ids, purchases)
    store.insert_transfers(transfers)
    store.set_balances({ledger_id: balances[ledger_id] for ledger_id in touched_ids(transfers)})
    return transfers, balances, wallet_ids


def accounts_in_debt(balances, wallet_ids):
    """Split cardholder accounts into (in_debt, clear) given balances of their wallets."""
    in_debt, clear = set(), set()
    for account_id, ids in wallet_ids.items():
        if any(balances.get(ledger_id, 0) < 0 for ledger_id in ids.values()):
            in_debt.add(account_id)
        else:
            clear.add(account_id)
    return in_debt, clear


def check_balances(store):
    """Recompute every balance from the transfers; returns a list of problems (empty when sound)."""
    derived = derive_balances(store.all_transfers())
    cached = store.all_balances()
    problems = []
    for ledger_id in sorted(set(derived) | set(cached)):
        if derived.get(ledger_id, 0) != cached.get(ledger_id, 0):
            problems.append("ledger account %d: cached %d fen, transfers say %d fen"
                            % (ledger_id, cached.get(ledger_id, 0), derived.get(ledger_id, 0)))
    total = sum(cached.values())
    if total != 0:
        problems.append("sum of all balances is %d fen, not 0" % total)
    return problems
