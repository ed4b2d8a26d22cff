"""Which wallets a merchant category may debit, in order - the same rule on terminals and server.

    category      code  wallets, in the order they are debited
    ----------    ----  ------------------------------------------
    canteen       1     main
    water         2     water -> legacy -> main
    electricity   3     legacy -> main

`legacy` is the old system's balance: spendable only on water and dorm electricity.

Activation units (激活机, firmware/core/activation.py) belong to merchants of their own category
(`CATEGORY_ACTIVATION`, 4): they sell nothing and debit no wallet, so it has no wallet order; their
records move old cards' money in by serial (sync_server/legacy_migration.py).
"""
CATEGORY_CANTEEN = 1
CATEGORY_WATER = 2
CATEGORY_ELECTRICITY = 3
CATEGORY_ACTIVATION = 4

WALLET_ORDER = {
    CATEGORY_CANTEEN: ("main",),
    CATEGORY_WATER: ("water", "legacy", "main"),
    CATEGORY_ELECTRICITY: ("legacy", "main"),
}
CATEGORY_NAMES = {CATEGORY_CANTEEN: "canteen", CATEGORY_WATER: "water", CATEGORY_ELECTRICITY: "electricity",
                  CATEGORY_ACTIVATION: "activation"}
MERCHANT_CATEGORIES = tuple(CATEGORY_NAMES)


def spendable_fen(balances_fen, category):
    """Total the category may spend from balances_fen {wallet: fen} (negative wallets count as 0)."""
    return sum(max(0, balances_fen.get(wallet, 0)) for wallet in WALLET_ORDER[category])


def split_debit(balances_fen, category, amount_fen, allow_shortfall=False):
    """Split amount_fen over the category's wallets in order: [(wallet, fen), ...].

    Without allow_shortfall, returns None when the wallets cannot cover the amount. With it (the
    server booking a tap a terminal already accepted offline), the rest goes on the last wallet,
    which may go negative; the server then reports and blocks the account.
    """
    assert amount_fen > 0
    order = WALLET_ORDER[category]
    remaining = amount_fen
    parts = []
    for wallet in order:
        take = min(remaining, max(0, balances_fen.get(wallet, 0)))
        if take:
            parts.append((wallet, take))
            remaining -= take
        if not remaining:
            return parts
    if not allow_shortfall:
        return None
    last = order[-1]
    if parts and parts[-1][0] == last:
        parts[-1] = (last, parts[-1][1] + remaining)
    else:
        parts.append((last, remaining))
    return parts
