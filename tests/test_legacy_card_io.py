"""The activation unit's card steps on old-system cards, on the `sim:` reader: read, lock, write the new
identity; a card pulled at every command of an activation and tapped again ends locked with the same
amounts and the identity written; cards that are not ours are refused."""
import pytest
from hypothesis import given, settings, strategies as st

from firmware.apps import card_io, legacy_card_io
from firmware.core import activation, card_layout, legacy_card, messages, mifare, sam as sam_module
from reader_drivers.base import AuthenticationError, CardGone, CardNak, Target, open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators import legacy_campus

OLD_MASTER_KEY = legacy_campus.old_master_key(20230223)
NEW_MASTER_KEY = bytes(range(100, 132))
ISSUER = sam_module.SoftwareSAM(sam_module.site_purpose_keys(NEW_MASTER_KEY, include_issuer=True))
POS = sam_module.SoftwareSAM(sam_module.site_purpose_keys(NEW_MASTER_KEY))
IDENTITY = card_layout.Identity(3100145, 880145, 1, card_layout.HOLDER_STUDENT, 20270630)
OTHER_IDENTITY = card_layout.Identity(3100999, 880999, 1, card_layout.HOLDER_STAFF, 20300101)
NAME = "阿木曲布"
MAIN = legacy_card.MAIN_PURSE
WATER = legacy_card.WATER_PURSE

# A fresh activation of an OK card, command by command (polls are not card commands):
# read 1 + 1 (sector 3) + 4 x (1 + 3) (purse sectors with trailers) + 1 (sector 1 blank) = 19;
# lock 4 x (1 + 3) (read again with key B) + 2 x (4 writes + 3 authentications) = 30;
# write identity 2 x (1 + 4) = 10.
FRESH_COMMANDS = (19, 30, 10)
# A torn purse's lock rewrites the losing copy's value block too, and may authenticate once more.
EXTRA_LOCK_COMMANDS = {"torn_before_commit": 1, "torn_at_commit": 2, "torn_after_commit": 2, "torn_water": 2}


def person(uid, category=legacy_card.STUDENT, main_fen=12345, water_fen=678, **extra):
    """One old cardholder as legacy_campus.make_card takes them."""
    fields = {"uid": uid, "serial": 10050123, "staff_number": "2021010145", "category": category,
              "expiry": 20250701, "name": "阿木曲布", "main_fen": main_fen, "main_counter": 87,
              "water_fen": water_fen, "water_counter": 12, "oddities": [], "lost": False}
    fields.update(extra)
    return fields


def old_card(holder):
    return legacy_campus.make_card(open_reader("sim:"), OLD_MASTER_KEY, holder)


def tear(card, purse, writes, spend_fen=300):
    """An old terminal's spend on `purse` cut after `writes` of its writes (legacy_card.write_plan)."""
    reader, _target = place(card)
    blocks = legacy_campus.read_purse_blocks(reader, OLD_MASTER_KEY, card.uid, purse)
    balance = legacy_card.read_purse(*blocks, purse=purse)[0]
    steps = legacy_card.write_plan(*blocks, balance - spend_fen, purse=purse, terminal=legacy_campus.OLD_TERMINAL)
    legacy_campus.write_steps(reader, OLD_MASTER_KEY, card.uid, steps[:writes])
    reader.field.pull()
    return card


def student():
    return old_card(person(bytes.fromhex("04a1b2c3")))


def teacher():
    return old_card(person(bytes.fromhex("04112233445566"), legacy_card.TEACHER, 456789, 0))


def torn_before_commit():
    card = student()
    return tear(card, MAIN, legacy_card.commit_step(_spend_plan(card, MAIN)))


def torn_at_commit():
    card = student()
    return tear(card, MAIN, legacy_card.commit_step(_spend_plan(card, MAIN)) + 1)


def torn_after_commit():
    card = student()
    return tear(card, MAIN, legacy_card.commit_step(_spend_plan(card, MAIN)) + 2)


def torn_water():
    card = student()
    return tear(card, WATER, legacy_card.commit_step(_spend_plan(card, WATER), WATER) + 1, spend_fen=50)


def _spend_plan(card, purse):
    blocks = [card.dump_block(block) for block in legacy_card.PURSES[purse].blocks()]
    return legacy_card.write_plan(*blocks, 1, purse=purse)


CARDS = {"student": student, "teacher": teacher, "torn_before_commit": torn_before_commit,
         "torn_at_commit": torn_at_commit, "torn_after_commit": torn_after_commit, "torn_water": torn_water}


def place(card, reader=None):
    reader = reader or open_reader("sim:")
    reader.field.place(card)
    return reader, reader.poll(0)


def copy_of(card):
    return ClassicCard.from_bytes(card.to_bytes())


def reading(card, purse):
    """The old rule on the card's memory (the test's view, past the reader)."""
    return legacy_campus.card_reading(card, purse)


def trailers_frozen(card, purse):
    spec = legacy_card.PURSES[purse]
    return all(legacy_card.trailer_locked(card.dump_block(mifare.trailer_block(sector)))
               for sector in (spec.main_sector, spec.backup_sector))


def activate(reader, target):
    """One whole activation's card steps, as the machine orders them -> the view read."""
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, ISSUER, target)
    legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, target, view)
    legacy_card_io.write_identity(reader, ISSUER, target, IDENTITY, NAME)
    return view


def commands(reader, step):
    before = reader.field.operation_count
    result = step()
    return reader.field.operation_count - before, result


def assert_activated(card, before):
    """Both purses locked (flag and frozen trailers) with the amounts and counters they had, no old
    terminal can spend them, and a POS reads the new identity."""
    for purse, (balance_fen, counter) in before.items():
        now = reading(card, purse)
        assert (now.balance_fen, now.counter, now.state, now.locked) == (balance_fen, counter, legacy_card.OK, True)
        assert trailers_frozen(card, purse)
        blocks = [card.dump_block(block) for block in legacy_card.PURSES[purse].blocks()]
        with pytest.raises(legacy_card.LegacyCardError, match="locked"):
            legacy_card.write_plan(*blocks, 0, purse=purse)
    reader, target = place(card)
    assert card_io.read_card(reader, POS, target) == card_io.CardView(card.uid, IDENTITY, NAME, 0)


def amounts(card):
    return {purse: (reading(card, purse).balance_fen, reading(card, purse).counter) for purse in (MAIN, WATER)}


# --- one step at a time -------------------------------------------------------------------------------

def test_a_fresh_old_card_reads_as_the_export_says():
    holder = person(bytes.fromhex("04a1b2c3"))
    reader, target = place(old_card(holder))
    count, view = commands(reader, lambda: legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target))
    assert count == FRESH_COMMANDS[0]
    assert view == activation.OldCardView(
        target.uid, legacy_card.OldIdentity(10050123, "2021010145", legacy_card.STUDENT, 20250701),
        activation.PurseView(12345, 87, legacy_card.OK, False), activation.PurseView(678, 12, legacy_card.OK, False),
        None)


def test_a_teacher_on_a_seven_byte_uid_reads_as_the_export_says():
    reader, target = place(teacher())
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert view.old_identity.category == legacy_card.TEACHER
    assert (view.main.balance_fen, view.water.balance_fen, view.new_identity) == (456789, 0, None)


@pytest.mark.parametrize("make, state, spent", [
    (torn_before_commit, legacy_card.RECOVERED_FROM_MAIN, False),
    (torn_at_commit, legacy_card.RECOVERED_FROM_BACKUP, True),
    (torn_after_commit, legacy_card.RECOVERED_FROM_BACKUP, True),
])
def test_a_torn_purse_reads_as_the_old_rule_says(make, state, spent):
    card = make()
    reader, target = place(card)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert view.main == activation.PurseView(12345 - 300 if spent else 12345, 88 if spent else 87, state, False)
    assert view.water == activation.PurseView(678, 12, legacy_card.OK, False)


def test_lock_then_read_both_purses_locked_with_the_same_amounts():
    card = student()
    reader, target = place(card)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    count, written = commands(reader, lambda: legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, target, view))
    assert (count, written) == (FRESH_COMMANDS[1], 8)
    again = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, reader.poll(0))
    assert again.main == view.main._replace(locked=True) and again.water == view.water._replace(locked=True)
    for purse in (MAIN, WATER):
        assert trailers_frozen(card, purse)
        blocks = legacy_campus.read_purse_blocks(reader, OLD_MASTER_KEY, card.uid, purse)
        with pytest.raises(legacy_card.LegacyCardError, match="旧卡已激活"):
            legacy_card.write_plan(*blocks, 100, purse=purse)
    # An old terminal that ignored the flag: the card itself refuses key B's write now.
    spec = legacy_card.PURSES[MAIN]
    reader.authenticate(mifare.trailer_block(spec.main_sector), mifare.B,
                        legacy_card.sector_key(OLD_MASTER_KEY, card.uid, spec.main_sector, mifare.B))
    with pytest.raises(CardNak):
        reader.write_block(spec.value_block(legacy_card.MAIN_COPY), mifare.encode_value_block(99999, 16))
    # Locked already: the lock reads, plans nothing and writes nothing.
    assert legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, reader.poll(0)) == 0


def test_a_half_locked_purse_is_not_reported_locked():
    card = student()
    reader, target = place(card)
    # 16 reads, then the main purse's two flagged records (an authentication before each): no trailer yet.
    reader.field.pull_after(16 + 4)
    with pytest.raises(CardGone):
        legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, target)
    assert reading(card, MAIN).locked and not trailers_frozen(card, MAIN)
    reader, target = place(card, reader)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert (view.main.balance_fen, view.main.locked, view.water.locked) == (12345, False, False)


def test_write_identity_then_a_pos_reads_the_new_identity():
    card = student()
    reader, target = place(card)
    count, written = commands(reader, lambda: legacy_card_io.write_identity(reader, ISSUER, target, IDENTITY, NAME))
    assert (count, written) == (FRESH_COMMANDS[2], [1, 2])
    assert card_io.read_card(reader, POS, reader.poll(0)) == card_io.CardView(card.uid, IDENTITY, NAME, 0)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, reader.poll(0))
    assert view.new_identity == IDENTITY
    # Written already: checked, not written again.
    assert legacy_card_io.write_identity(reader, ISSUER, reader.poll(0), IDENTITY, NAME) == []


def test_a_whole_activation_then_the_machine_calls_the_card_already_activated():
    card = student()
    reader, target = place(card)
    before = amounts(card)
    activate(reader, target)
    assert_activated(card, before)
    reader, target = place(card, reader)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert view.new_identity == IDENTITY and view.main.locked and view.water.locked
    unit = activation.ActivationUnit()
    unit.handle(activation.CardPresented(card.uid))
    actions = unit.handle(activation.OldCardRead(view))
    assert activation.Show(messages.ALREADY_ACTIVATED, {}) in actions and unit.state == activation.IDLE


def test_an_activation_tapped_again_after_success_writes_nothing():
    card = student()
    reader, target = place(card)
    activate(reader, target)
    image = card.to_bytes()
    activate(reader, reader.poll(0))
    assert card.to_bytes() == image


# --- pulled at every command --------------------------------------------------------------------------

def _activation_commands(card):
    reader, target = place(copy_of(card))
    return commands(reader, lambda: activate(reader, target))[0]


@pytest.mark.parametrize("kind", sorted(CARDS))
def test_pulled_at_any_command_the_next_tap_finishes_with_the_same_amounts(kind):
    original = CARDS[kind]()
    before = amounts(original)
    assert all(balance is not None for balance, _counter in before.values())
    total = _activation_commands(original)
    assert total == sum(FRESH_COMMANDS) + EXTRA_LOCK_COMMANDS.get(kind, 0)
    for command in range(1, total + 1):
        for done in (False, True):
            card = copy_of(original)
            reader, target = place(card)
            reader.field.pull_after(command, done=done)
            with pytest.raises(CardGone):
                activate(reader, target)
            reader, target = place(card, reader)
            view = activate(reader, target)
            assert {MAIN: view.main[:2], WATER: view.water[:2]} == before, (command, done)
            assert_activated(card, before)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(CARDS)), st.lists(st.tuples(st.integers(1, 65), st.booleans()), max_size=6))
def test_pulled_again_and_again_the_card_ends_activated_with_the_same_amounts(kind, pulls):
    card = CARDS[kind]()
    before = amounts(card)
    reader = open_reader("sim:")
    for command, done in pulls:
        reader, target = place(card, reader)
        remove = reader.field.pull_after(command, done=done)
        try:
            view = activate(reader, target)
        except CardGone:
            continue
        finally:
            remove()
        assert {MAIN: view.main[:2], WATER: view.water[:2]} == before
    reader, target = place(card, reader)
    view = activate(reader, target)
    assert {MAIN: view.main[:2], WATER: view.water[:2]} == before
    assert_activated(card, before)


# --- refusals -----------------------------------------------------------------------------------------

def test_a_card_spent_between_read_and_lock_is_not_locked_with_stale_amounts():
    card = student()
    reader, target = place(card)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    tear(card, MAIN, 4)                   # a whole spend at an old terminal meanwhile
    image = card.to_bytes()
    reader, target = place(card, reader)
    with pytest.raises(legacy_card_io.CardChanged) as refused:
        legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, target, view)
    assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_GONE
    assert card.to_bytes() == image


def test_another_identity_on_the_card_is_refused_and_nothing_is_written():
    card = student()
    reader, target = place(card)
    legacy_card_io.write_identity(reader, ISSUER, target, OTHER_IDENTITY, "王芳")
    image = card.to_bytes()
    with pytest.raises(card_layout.CardFormatError, match="另一身份") as refused:
        legacy_card_io.write_identity(reader, ISSUER, reader.poll(0), IDENTITY, NAME)
    assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_FORMAT
    assert card.to_bytes() == image


def test_another_identity_in_sector_1_alone_is_refused_before_sector_2_is_written():
    card = student()
    reader, target = place(card)
    reader.field.pull_after(5)            # sector 1 whole, sector 2 not begun
    with pytest.raises(CardGone):
        legacy_card_io.write_identity(reader, ISSUER, target, OTHER_IDENTITY, "王芳")
    reader, target = place(card, reader)
    assert legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target).new_identity is None
    image = card.to_bytes()
    with pytest.raises(card_layout.CardFormatError, match="另一身份"):
        legacy_card_io.write_identity(reader, ISSUER, reader.poll(0), IDENTITY, NAME)
    assert card.to_bytes() == image


def test_new_sectors_under_another_sites_keys_are_refused():
    other_site = sam_module.SoftwareSAM(sam_module.site_purpose_keys(b"\x07" * 32, include_issuer=True))
    card = student()
    reader, target = place(card)
    legacy_card_io.write_identity(reader, other_site, target, IDENTITY, NAME)
    for step in (lambda: legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, reader.poll(0)),
                 lambda: legacy_card_io.write_identity(reader, ISSUER, reader.poll(0), IDENTITY, NAME)):
        with pytest.raises(AuthenticationError) as refused:
            step()
        assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_AUTH


@pytest.mark.parametrize("make", [lambda: ClassicCard(bytes.fromhex("0badcafe")), "new_system_card"])
def test_a_card_that_is_not_an_old_card_is_refused_as_format(make):
    if make == "new_system_card":
        card = ClassicCard(bytes.fromhex("0badcafe"))
        reader, target = place(card)
        card_io.issue_card(reader, ISSUER, target, IDENTITY, NAME)
    else:
        card = make()
    image = card.to_bytes()
    reader, target = place(card)
    with pytest.raises(card_layout.CardFormatError, match="不是旧系统卡片") as refused:
        legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_FORMAT
    assert card.to_bytes() == image


def test_an_old_card_of_another_campus_is_refused_by_its_keys():
    card = legacy_campus.make_card(open_reader("sim:"), legacy_campus.old_master_key(1),
                                   person(bytes.fromhex("04a1b2c3")))
    reader, target = place(card)
    with pytest.raises(AuthenticationError) as refused:
        legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_AUTH


def test_a_card_that_is_not_a_classic_1k_is_refused_without_a_command():
    reader = open_reader("sim:")
    target = Target(bytes.fromhex("04a1b2c3"), 0x0002, 0x18)      # a Classic 4K
    for step in (lambda: legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target),
                 lambda: legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, target),
                 lambda: legacy_card_io.write_identity(reader, ISSUER, target, IDENTITY, NAME)):
        with pytest.raises(card_layout.CardFormatError):
            step()
    assert reader.field.operation_count == 0


def test_an_unreadable_purse_is_read_as_such_and_never_locked():
    card = old_card(person(bytes.fromhex("04a1b2c3"), oddities=["unreadable"], spend_fen=500))
    reader, target = place(card)
    view = legacy_card_io.read_old_card(reader, OLD_MASTER_KEY, POS, target)
    assert view.main.state == legacy_card.UNREADABLE and view.water.state == legacy_card.OK
    image = card.to_bytes()
    with pytest.raises(card_layout.CardFormatError) as refused:
        legacy_card_io.lock_purses(reader, OLD_MASTER_KEY, reader.poll(0), view)
    assert legacy_card_io.failure_reason(refused.value) == activation.FAILURE_FORMAT
    assert card.to_bytes() == image


def test_a_failed_card_step_maps_to_the_machines_words():
    assert legacy_card_io.failure_reason(CardGone("x")) == activation.FAILURE_GONE
    assert legacy_card_io.failure_reason(CardNak("x")) == activation.FAILURE_READER
    assert legacy_card_io.failure_reason(legacy_card.LegacyCardError("x")) == activation.FAILURE_FORMAT
