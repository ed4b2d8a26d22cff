"""Card PIN (交易密码) changes: by the cardholder with the old PIN, or reset by staff at the hall.

The rules live in sync_server/pin_rules.py (6 digits, initial PIN from the ID number with letters read as
0, salted scrypt hashes, lockout after MAX_PIN_FAILURES wrong tries); this module adds the two
operations the manuals name: 修改密码 (old PIN + new PIN) and the service hall's reset for a holder
who forgot it ("如原密码忘记，请带上证件到...处理").

A chosen PIN too easy to guess (pin_rules.weak_pin_reason: one digit six times, a run, the ID
number's birth date, the initial PIN) is refused with the rule it breaks, before the old PIN is
looked at; a staff reset back to the initial PIN stays allowed: that is the known starting point.
"""
from sync_server import messages, pin_rules
from sync_server.services import ServiceError, holder_actions, now, person_row, register_messages, tx, with_pin

register_messages({
    "pin_same": (400, "新密码不能与原密码相同", "the new PIN must differ from the old one"),
    "pin_mismatch": (400, "两次输入的新密码不一致", "the two new PINs differ"),
})
register_messages({code: (400,) + messages.MESSAGES[code] for code in (
    "pin_weak_same_digit", "pin_weak_run", "pin_weak_birthday", "pin_weak_initial")})


def _check_new(new_pin, confirm_pin):
    if not pin_rules.valid_pin_format(new_pin):
        raise ServiceError("pin_format")
    if confirm_pin is not None and confirm_pin != new_pin:
        raise ServiceError("pin_mismatch")


def _refuse_weak(holder, new_pin):
    reason = pin_rules.weak_pin_reason(new_pin, holder["id_number"], holder["staff_number"])
    if reason is not None:
        raise ServiceError(reason)


def change_pin(conn, account_id, old_pin, new_pin, confirm_pin=None, now_ms=None, via=None):
    """修改密码: needs the old PIN (wrong tries count towards the lockout). Recorded in the holder's
    action log (`via`: where; never the PIN)."""
    _check_new(new_pin, confirm_pin)
    if new_pin == old_pin:
        raise ServiceError("pin_same")
    _refuse_weak(person_row(conn, account_id), new_pin)
    salted_hash = pin_rules.new_pin_hash(new_pin)        # hashed before the write lock is taken
    now_ms = now(now_ms)

    def operation():
        pin_rules.store_pin(conn, account_id, salted_hash)
        holder_actions.record(conn, account_id, "pin_change", via, now_ms=now_ms)
    return with_pin(conn, account_id, old_pin, None, now_ms, operation)


def reset_pin(conn, account_id, operator, new_pin=None, also=None):
    """Staff reset after checking the holder's ID: to `new_pin`, or back to the initial PIN (which
    then again forbids self-service unfreeze until the holder changes it). Clears any lockout.
    `also(conn)` runs in the same transaction (the hall page's staff log line).
    Returns True when the PIN is now the initial one."""
    assert operator, "a PIN reset names the staff member"
    if new_pin is not None:
        _check_new(new_pin, None)
    holder = person_row(conn, account_id)
    initial = pin_rules.initial_pin(holder["id_number"], holder["staff_number"])
    if new_pin is not None and new_pin != initial:
        _refuse_weak(holder, new_pin)
    salted_hash = pin_rules.new_pin_hash(new_pin or initial)     # hashed before the write lock is taken
    with tx(conn):
        person_row(conn, account_id)
        pin_rules.store_pin(conn, account_id, salted_hash)
        if also is not None:
            also(conn)
    return (new_pin or initial) == initial
