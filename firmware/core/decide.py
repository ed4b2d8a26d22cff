"""The decision for one tap, made on the terminal with no network: accept, decline or ask for a PIN.

Pure: everything it needs comes in as plain values (DESIGN.md section 2, "offline decisions,
bounded risk"). The order of the checks is the order a cardholder should hear the reason in:

    1. terminal revoked                         -> TERMINAL_REVOKED
    2. amount outside 0 < amount <= max         -> INVALID_AMOUNT
    3. identity-only card (no wallet)           -> NO_WALLET
    4. deny list: card+generation, card number, account
    5. card expired (expiry before today)       -> CARD_EXPIRED
    6. replaced card (a newer generation exists) -> CARD_REPLACED
    7. account unknown to the balance cache     -> ACCOUNT_NOT_SYNCED (genuine card, no balance here yet)
    8. limits (single, daily)                   -> NeedPin online, PIN_NEEDS_NETWORK offline;
                                                   skipped once the PIN was verified online
    9. balance = cached - own unacknowledged spend -> INSUFFICIENT_BALANCE
   10. offline caps (count, amount) per account at this terminal, only while offline

Limits of 0 or None mean "no limit". The cached balances are at some server version; spending this
terminal recorded but the server has not acknowledged yet is taken off before splitting, in the
category's wallet order (the server books it the same way).
"""
from collections import namedtuple

from firmware.core import card_layout, messages, protocol, records, wallets

# What the deny list says about one card; reasons are None when not denied. newest_generation is the
# highest generation of this card number the deny list has mentioned (0 when none).
DenyView = namedtuple("DenyView", ("terminal_revoked", "card_reason", "card_number_reason",
                                   "account_reason", "newest_generation"))
NOT_DENIED = DenyView(False, None, None, None, 0)

# What the terminal knows of one account: balances_fen {wallet: fen} from the server cache, the
# server's spent_today and limits, and this terminal's own unacknowledged spend for the account.
AccountView = namedtuple("AccountView", ("known", "balances_fen", "spent_today_fen", "single_limit_fen",
                                         "daily_limit_fen", "unacked_fen", "unacked_count"))

# What one account may spend at this terminal while it cannot reach the server. None = no cap.
OfflineCaps = namedtuple("OfflineCaps", ("count", "amount_fen"))

Accept = namedtuple("Accept", ("split", "balance_after_fen", "flags"))
Decline = namedtuple("Decline", ("message_code",))
NeedPin = namedtuple("NeedPin", ("message_code",))

# Deny reasons the server gives (protocol.DENY_REASON_*); anything else falls back on the entry kind.
_REASON_MESSAGES = {
    protocol.DENY_REASON_LOST: messages.CARD_LOST,
    protocol.DENY_REASON_REPLACED: messages.CARD_REPLACED,
    protocol.DENY_REASON_FROZEN: messages.ACCOUNT_BLOCKED,
    protocol.DENY_REASON_NEGATIVE: messages.ACCOUNT_BLOCKED,
}


def _deny_message(reason, fallback):
    return _REASON_MESSAGES.get(reason, fallback)


def _no_limit(limit_fen):
    return limit_fen is None or limit_fen <= 0


def spendable_after_unacked(balances_fen, category, unacked_fen):
    """Balances with this terminal's unacknowledged spend taken off in the category's wallet order."""
    adjusted = dict(balances_fen)
    if unacked_fen > 0:
        for wallet, part_fen in wallets.split_debit(adjusted, category, unacked_fen, allow_shortfall=True):
            adjusted[wallet] = adjusted.get(wallet, 0) - part_fen
    return adjusted


def _limit_check(account, amount_fen):
    if not _no_limit(account.single_limit_fen) and amount_fen > account.single_limit_fen:
        return messages.OVER_SINGLE_LIMIT_PIN
    spent_fen = max(0, account.spent_today_fen or 0) + account.unacked_fen
    if not _no_limit(account.daily_limit_fen) and spent_fen + amount_fen > account.daily_limit_fen:
        return messages.OVER_DAILY_LIMIT_PIN
    return None


def _offline_cap_reached(account, amount_fen, caps):
    if caps.count is not None and account.unacked_count + 1 > caps.count:
        return True
    return caps.amount_fen is not None and account.unacked_fen + amount_fen > caps.amount_fen


def decide(identity, amount_fen, category, today_yyyymmdd, deny, account, online, caps,
           pin_verified=False, max_amount_fen=records.MAX_AMOUNT_FEN):
    """One tap's outcome: Accept(split, balance_after_fen, flags), Decline(code) or NeedPin(code)."""
    assert category in wallets.WALLET_ORDER
    assert max_amount_fen <= records.MAX_AMOUNT_FEN
    if deny.terminal_revoked:
        return Decline(messages.TERMINAL_REVOKED)
    if not 0 < amount_fen <= max_amount_fen:
        return Decline(messages.INVALID_AMOUNT)
    if identity.holder_category == card_layout.HOLDER_IDENTITY_ONLY:
        return Decline(messages.NO_WALLET)
    if deny.card_reason is not None:
        return Decline(_deny_message(deny.card_reason, messages.CARD_LOST))
    if deny.card_number_reason is not None:
        return Decline(_deny_message(deny.card_number_reason, messages.CARD_LOST))
    if deny.account_reason is not None:
        return Decline(_deny_message(deny.account_reason, messages.ACCOUNT_BLOCKED))
    if identity.expiry_yyyymmdd and identity.expiry_yyyymmdd < today_yyyymmdd:
        return Decline(messages.CARD_EXPIRED)
    if identity.generation < deny.newest_generation:
        return Decline(messages.CARD_REPLACED)
    if not account.known:
        return Decline(messages.ACCOUNT_NOT_SYNCED)
    if not pin_verified:
        over_code = _limit_check(account, amount_fen)
        if over_code is not None:
            return NeedPin(over_code) if online else Decline(messages.PIN_NEEDS_NETWORK)
    adjusted = spendable_after_unacked(account.balances_fen, category, account.unacked_fen)
    split = wallets.split_debit(adjusted, category, amount_fen)
    if split is None:
        return Decline(messages.INSUFFICIENT_BALANCE)
    if not online and _offline_cap_reached(account, amount_fen, caps):
        return Decline(messages.OFFLINE_CAP_REACHED)
    balance_after_fen = wallets.spendable_fen(adjusted, category) - amount_fen
    assert balance_after_fen >= 0
    flags = 0
    if not online:
        flags |= records.FLAG_OFFLINE
    if pin_verified:
        flags |= records.FLAG_PIN_VERIFIED
    return Accept(split, balance_after_fen, flags)
