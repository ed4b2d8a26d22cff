"""The activation unit's state machine: every path, a card pulled at each step and resumed, the
table, and the activation record (plain asserts, also under MicroPython)."""
from firmware.core import activation as act, card_layout, legacy_card, messages, records

from .expect import raises

UID = b"\x04\xa1\xb2\xc3"
SERIAL = 20230145
NOW_MS = 1677117600000      # 2023-02-23 10:00 in Beijing, the first day of the campaign
NEW_IDENTITY = card_layout.Identity(3100145, 880145, 1, card_layout.HOLDER_STUDENT, 20270630)
TICKET = act.Ticket(NEW_IDENTITY, legacy_card.STUDENT, "李小红")
OLD_IDENTITY = legacy_card.OldIdentity(SERIAL, "2021010145", legacy_card.STUDENT, 20250630)


def purse(balance_fen=0, counter=0, state=legacy_card.OK, locked=False):
    return act.PurseView(balance_fen, counter, state, locked)


def card(main=None, water=None, new_identity=None):
    return act.OldCardView(UID, OLD_IDENTITY, main or purse(12345, 87), water or purse(678, 12), new_identity)


def unit():
    m = act.ActivationUnit({"terminal_id": 41})
    assert m.handle(act.Tick(NOW_MS)) == []
    return m


def speaks(actions):
    return [a.text for a in actions if isinstance(a, act.Speak)]


def shown(actions):
    return [a.message_code for a in actions if isinstance(a, act.Show)]


def outcome(actions):
    found = [a for a in actions if isinstance(a, act.Outcome)]
    assert len(found) <= 1
    return found[0] if found else None


def journals(actions):
    return [a for a in actions if isinstance(a, act.JournalActivation)]


def refused_with(actions, code, m):
    assert m.state == act.IDLE
    assert shown(actions) == [code]
    assert act.Beep(act.BEEP_ERROR) in actions
    done = outcome(actions)
    assert done is not None and not done.accepted and done.message_code == code and done.seq is None
    assert messages.ACTIVATED not in shown(actions) and messages.ACTIVATED_AMOUNTS not in shown(actions)
    assert "卡片激活成功" not in speaks(actions)
    return done


def to_looking(m, view=None):
    m.handle(act.CardPresented(UID))
    actions = m.handle(act.OldCardRead(view or card()))
    assert actions == [act.LookUpTicket(SERIAL)] and m.state == act.LOOKING
    return actions


def to_locking(m, view=None, journaled=False):
    to_looking(m, view)
    actions = m.handle(act.TicketFound(TICKET, journaled))
    assert actions == [act.LockPurses(UID)] and m.state == act.LOCKING
    return actions


def to_writing(m, seq=1):
    to_locking(m)
    m.handle(act.PursesLocked())
    actions = m.handle(act.Journaled(seq))
    assert actions == [act.WriteIdentity(UID, NEW_IDENTITY, "李小红")] and m.state == act.WRITING
    return actions


EXPECTED_FIELDS = {"terminal_id": 41, "card_number": 3100145, "account_id": 880145, "card_generation": 1,
                   "category": legacy_card.STUDENT, "serial": SERIAL, "main_fen": 12345, "main_counter": 87,
                   "water_fen": 678, "water_counter": 12, "flags": 0}


def test_happy_path_exact_actions():
    m = unit()
    actions = m.handle(act.CardPresented(UID))
    assert actions == [act.Show(messages.ACTIVATING, {}), act.Speak("卡片激活中，请勿移开卡片"), act.ReadOldCard(UID)]
    assert m.state == act.READING
    assert m.handle(act.OldCardRead(card())) == [act.LookUpTicket(SERIAL)]
    assert m.handle(act.TicketFound(TICKET, False)) == [act.LockPurses(UID)]
    assert m.handle(act.PursesLocked()) == [act.JournalActivation(EXPECTED_FIELDS)]
    assert m.state == act.JOURNALING
    assert m.handle(act.Journaled(7)) == [act.WriteIdentity(UID, NEW_IDENTITY, "李小红")]
    done = m.handle(act.IdentityWritten())
    assert done == [act.Show(messages.ACTIVATED_AMOUNTS, {"main_fen": 12345, "water_fen": 678}),
                    act.Speak("卡片激活成功"), act.Beep(act.BEEP_OK),
                    act.Outcome(True, messages.ACTIVATED, 7, SERIAL, 3100145, 12345, 678)]
    assert m.state == act.IDLE and m.pending is None
    assert messages.text(messages.ACTIVATED_AMOUNTS, main_fen=12345, water_fen=678) == \
        "卡片激活成功 原卡余额123.45元 小钱包6.78元"


def test_the_journal_fields_encode_as_a_record():
    data = records.encode_activation(seq=3, time_ms=NOW_MS, **EXPECTED_FIELDS)
    assert records.decode(data)["kind"] == records.KIND_ACTIVATION
    assert records.activation_fields(data) == (SERIAL, 12345, 87, 678, 12)


def test_activating_is_spoken_first_and_success_only_after_the_identity_is_written():
    m = unit()
    spoken = []
    for event in (act.CardPresented(UID), act.OldCardRead(card()), act.TicketFound(TICKET, False),
                  act.PursesLocked(), act.Journaled(1)):
        actions = m.handle(event)
        spoken += speaks(actions)
        assert messages.ACTIVATED_AMOUNTS not in shown(actions) and outcome(actions) is None
    assert spoken == ["卡片激活中，请勿移开卡片"]
    spoken += speaks(m.handle(act.IdentityWritten()))
    assert spoken == ["卡片激活中，请勿移开卡片", "卡片激活成功"]


def test_english_voice_when_configured():
    m = act.ActivationUnit({"lang": "en"})
    assert speaks(m.handle(act.CardPresented(UID))) == ["Activating the card: keep it in place"]


def test_empty_purses_still_activate():
    m = unit()
    to_looking(m, card(purse(0, 0), purse(0, 0)))
    m.handle(act.TicketFound(TICKET, False))
    fields = journals(m.handle(act.PursesLocked()))[0].record_fields
    assert fields["main_fen"] == 0 and fields["water_fen"] == 0
    records.encode_activation(seq=1, time_ms=NOW_MS, **fields)
    m.handle(act.Journaled(1))
    assert outcome(m.handle(act.IdentityWritten())).accepted


def test_a_torn_purse_is_recorded_with_its_flag():
    m = unit()
    to_looking(m, card(purse(500, 9, legacy_card.RECOVERED_FROM_BACKUP), purse(20, 3, legacy_card.RECOVERED_FROM_MAIN)))
    m.handle(act.TicketFound(TICKET, False))
    fields = journals(m.handle(act.PursesLocked()))[0].record_fields
    assert fields["flags"] == records.ACTIVATION_MAIN_RECOVERED | records.ACTIVATION_WATER_RECOVERED
    assert (fields["main_fen"], fields["main_counter"], fields["water_fen"]) == (500, 9, 20)


def test_purse_view_from_a_real_reading():
    blocks = legacy_card.encode_purse(legacy_card.MAIN_PURSE, 4321, 17, legacy_card.FLAG_LOCKED)
    view = act.purse_view(legacy_card.inspect_purse(*blocks))
    assert view == act.PurseView(4321, 17, legacy_card.OK, True)


# --- refusals ---------------------------------------------------------------------------------------

def test_unreadable_purse_is_refused_and_nothing_journaled():
    for main, water in ((purse(None, None, legacy_card.UNREADABLE), purse(5, 1)),
                        (purse(5, 1), purse(None, None, legacy_card.UNREADABLE))):
        m = unit()
        m.handle(act.CardPresented(UID))
        actions = m.handle(act.OldCardRead(card(main, water)))
        done = refused_with(actions, messages.CARD_UNREADABLE_OLD, m)
        assert done.serial == SERIAL
        assert not [a for a in actions if isinstance(a, (act.LookUpTicket, act.LockPurses, act.JournalActivation))]
    assert "原一卡通中心" in messages.text(messages.CARD_UNREADABLE_OLD)


def test_read_failures():
    for reason, code in ((act.FAILURE_GONE, messages.TAP_AGAIN), (act.FAILURE_FORMAT, messages.UNKNOWN_CARD),
                         (act.FAILURE_AUTH, messages.UNKNOWN_CARD), (act.FAILURE_READER, messages.READER_ERROR)):
        m = unit()
        m.handle(act.CardPresented(UID))
        refused_with(m.handle(act.OldCardReadFailed(reason)), code, m)


def test_no_ticket_is_refused_with_the_seeds_instruction():
    m = unit()
    to_looking(m)
    actions = m.handle(act.TicketFound(None, False))
    refused_with(actions, messages.ACTIVATION_REFUSED, m)
    assert messages.text(messages.ACTIVATION_REFUSED) == "该卡无法激活，请到原一卡通中心处理"
    assert not [a for a in actions if isinstance(a, act.LockPurses)]


def test_a_ticket_with_an_unknown_category_is_refused():
    m = unit()
    to_looking(m)
    refused_with(m.handle(act.TicketFound(act.Ticket(NEW_IDENTITY, 9, ""), False)), messages.ACTIVATION_REFUSED, m)


def test_lookup_without_cache_or_server_asks_to_come_back():
    m = unit()
    to_looking(m)
    refused_with(m.handle(act.TicketLookupFailed("offline")), messages.ACTIVATION_UNAVAILABLE, m)


def test_journal_failure_is_refused_and_the_next_tap_records_it():
    m = unit()
    to_locking(m)
    m.handle(act.PursesLocked())
    done = refused_with(m.handle(act.JournalFailed("disk full")), messages.ACTIVATION_NOT_RECORDED, m)
    assert done.card_number == 3100145
    # The purses are locked now, the amounts the same; nothing is recorded yet, so the next tap records.
    locked = card(purse(12345, 87, locked=True), purse(678, 12, locked=True))
    to_locking(m, locked, journaled=False)
    assert m.handle(act.PursesLocked()) == [act.JournalActivation(EXPECTED_FIELDS)]


def test_lock_and_write_refusals_by_reason():
    for reason, code in ((act.FAILURE_GONE, messages.TAP_AGAIN), (act.FAILURE_AUTH, messages.ACTIVATION_REFUSED),
                         (act.FAILURE_FORMAT, messages.ACTIVATION_REFUSED),
                         (act.FAILURE_READER, messages.READER_ERROR)):
        m = unit()
        to_locking(m)
        refused_with(m.handle(act.LockFailed(reason)), code, m)
        m = unit()
        to_writing(m)
        refused_with(m.handle(act.IdentityWriteFailed(reason)), code, m)


# --- pulled cards and resumes -----------------------------------------------------------------------

def finish(m, seq=None):
    """From LOCKING after a resumed TicketFound(journaled=True): no second record, success."""
    actions = m.handle(act.PursesLocked())
    assert actions == [act.WriteIdentity(UID, NEW_IDENTITY, "李小红")] and not journals(actions)
    done = m.handle(act.IdentityWritten())
    assert "卡片激活成功" in speaks(done)
    return outcome(done)


def test_pulled_while_reading_then_tapped_again_completes():
    m = unit()
    m.handle(act.CardPresented(UID))
    refused_with(m.handle(act.OldCardReadFailed(act.FAILURE_GONE)), messages.TAP_AGAIN, m)
    to_locking(m)
    assert journals(m.handle(act.PursesLocked()))
    m.handle(act.Journaled(1))
    assert outcome(m.handle(act.IdentityWritten())) == act.Outcome(True, messages.ACTIVATED, 1, SERIAL, 3100145,
                                                                  12345, 678)


def test_pulled_while_locking_then_resumed():
    m = unit()
    to_locking(m)
    refused_with(m.handle(act.LockFailed(act.FAILURE_GONE)), messages.TAP_AGAIN, m)
    # The lock was torn: one purse carries the flag, nothing recorded yet; the next tap locks on and records.
    half = card(purse(12345, 87, locked=True), purse(678, 12))
    to_locking(m, half, journaled=False)
    assert m.handle(act.PursesLocked()) == [act.JournalActivation(EXPECTED_FIELDS)]
    m.handle(act.Journaled(2))
    assert outcome(m.handle(act.IdentityWritten())).seq == 2


def test_pulled_while_writing_then_resumed_without_a_second_record():
    m = unit()
    to_writing(m, seq=5)
    refused_with(m.handle(act.IdentityWriteFailed(act.FAILURE_GONE)), messages.TAP_AGAIN, m)
    locked = card(purse(12345, 87, locked=True), purse(678, 12, locked=True))
    to_locking(m, locked, journaled=True)
    done = finish(m)
    assert done == act.Outcome(True, messages.ACTIVATED, None, SERIAL, 3100145, 12345, 678)


def test_pulled_after_the_record_before_the_write_resumes_at_another_unit():
    """The server says the serial is recorded (another unit's journal): lock (a no-op) and write."""
    m = unit()
    locked = card(purse(12345, 87, locked=True), purse(678, 12, locked=True))
    to_locking(m, locked, journaled=True)
    assert finish(m).accepted


def test_torn_identity_write_is_not_taken_for_activated():
    """A torn identity write leaves no verified identity (the shell reports None): resumed, not skipped."""
    m = unit()
    locked = card(purse(12345, 87, locked=True), purse(678, 12, locked=True), None)
    to_locking(m, locked, journaled=True)
    assert finish(m).accepted


def test_already_activated_shows_success_again_and_records_nothing():
    m = unit()
    m.handle(act.CardPresented(UID))
    done_card = card(purse(12345, 87, locked=True), purse(678, 12, locked=True), NEW_IDENTITY)
    actions = m.handle(act.OldCardRead(done_card))
    assert m.state == act.IDLE
    assert actions == [act.Show(messages.ALREADY_ACTIVATED, {}), act.Speak("卡片已激活"), act.Beep(act.BEEP_OK),
                       act.Outcome(True, messages.ALREADY_ACTIVATED, None, SERIAL, 3100145, 12345, 678)]


def test_new_identity_without_locked_purses_goes_through_again():
    m = unit()
    to_looking(m, card(purse(12345, 87, locked=True), purse(678, 12), NEW_IDENTITY))


def test_card_seen_again_while_busy_is_ignored_and_ticks_go_everywhere():
    m = unit()
    m.handle(act.CardPresented(UID))
    steps = ((act.OldCardRead(card()), act.LOOKING), (act.TicketFound(TICKET, False), act.LOCKING),
             (act.PursesLocked(), act.JOURNALING), (act.Journaled(1), act.WRITING))
    assert m.handle(act.CardPresented(UID)) == [] and m.state == act.READING
    for index, (event, state) in enumerate(steps):
        m.handle(event)
        assert m.state == state
        assert m.handle(act.CardPresented(b"\x01\x02\x03\x04")) == [] and m.state == state
        assert m.handle(act.Tick(NOW_MS + 1000 * (index + 1))) == [] and m.state == state
    assert m.now_ms == NOW_MS + 4000
    m.handle(act.Tick(NOW_MS))            # time never goes back
    assert m.now_ms == NOW_MS + 4000
    assert outcome(m.handle(act.IdentityWritten())).accepted


# --- the table ---------------------------------------------------------------------------------------

SAMPLES = {
    act.CardPresented: act.CardPresented(UID), act.OldCardRead: act.OldCardRead(card()),
    act.OldCardReadFailed: act.OldCardReadFailed(act.FAILURE_GONE), act.TicketFound: act.TicketFound(TICKET, False),
    act.TicketLookupFailed: act.TicketLookupFailed("offline"), act.PursesLocked: act.PursesLocked(),
    act.LockFailed: act.LockFailed(act.FAILURE_GONE), act.Journaled: act.Journaled(1),
    act.JournalFailed: act.JournalFailed("x"), act.IdentityWritten: act.IdentityWritten(),
    act.IdentityWriteFailed: act.IdentityWriteFailed(act.FAILURE_GONE), act.Tick: act.Tick(NOW_MS),
}


def machine_in(state):
    m = unit()
    path = (act.CardPresented(UID), act.OldCardRead(card()), act.TicketFound(TICKET, False), act.PursesLocked(),
            act.Journaled(1))
    for event in path:
        if m.state == state:
            break
        m.handle(event)
    assert m.state == state
    return m


def test_every_pair_not_in_the_table_raises():
    assert sorted(SAMPLES, key=lambda t: t.__name__) == sorted(act.EVENTS, key=lambda t: t.__name__)
    refused = 0
    for state in act.STATES:
        for event_type in act.EVENTS:
            if (state, event_type) in act.TRANSITIONS:
                continue
            m = machine_in(state)
            raises(act.ActivationError, m.handle, SAMPLES[event_type])
            assert m.state == state
            refused += 1
    assert refused == len(act.STATES) * len(act.EVENTS) - len(act.TRANSITIONS) > 0


def test_every_table_entry_names_known_states():
    for (state, event_type), (_handler, allowed) in act.TRANSITIONS.items():
        assert state in act.STATES and event_type in act.EVENTS
        for target in allowed:
            assert target in act.STATES
    for state in act.STATES:
        assert (state, act.Tick) in act.TRANSITIONS


# --- the record -------------------------------------------------------------------------------------

def _activation(**changes):
    fields = dict(terminal_id=41, seq=9, time_ms=NOW_MS, card_number=3100145, account_id=880145, card_generation=1,
                  category=legacy_card.TEACHER, serial=legacy_card.SERIAL_MAX, main_fen=legacy_card.PURSES[1].max_fen,
                  main_counter=legacy_card.COUNTER_MAX, water_fen=legacy_card.PURSES[2].max_fen,
                  water_counter=legacy_card.COUNTER_MAX - 1, flags=records.ACTIVATION_MAIN_RECOVERED)
    fields.update(changes)
    return fields


def test_activation_record_round_trip_and_layout():
    for changes in ({}, {"main_fen": 0, "water_fen": 0, "main_counter": 0, "water_counter": 0, "flags": 0,
                         "serial": 1}):
        fields = _activation(**changes)
        data = records.encode_activation(**fields)
        assert len(data) == records.RECORD_SIZE
        decoded = records.decode(data)
        assert decoded["kind"] == records.KIND_ACTIVATION and decoded["seq"] == 9
        assert decoded["card_number"] == 3100145 and decoded["account_id"] == 880145
        assert decoded["category"] == fields["category"] and decoded["flags"] == fields["flags"]
        assert decoded["tap_counter"] == fields["serial"] and decoded["amount_fen"] == fields["main_fen"]
        assert decoded["merchant_id"] == fields["main_counter"]
        assert records.activation_fields(data) == (fields["serial"], fields["main_fen"], fields["main_counter"],
                                                   fields["water_fen"], fields["water_counter"])
    assert records.KIND_ACTIVATION in records.KINDS


def test_activation_record_refuses_impossible_values():
    for changes in ({"serial": 0}, {"serial": records.OLD_SERIAL_MAX + 1}, {"main_fen": -1},
                    {"main_fen": records.MAX_AMOUNT_FEN + 1}, {"water_fen": records.MAX_AMOUNT_FEN + 1},
                    {"main_counter": records.OLD_COUNTER_MAX + 1}, {"card_number": 0}, {"account_id": 0},
                    {"flags": records.FLAG_OFFLINE}, {"seq": 0}):
        raises(records.RecordError, records.encode_activation, **_activation(**changes))


def test_activation_record_corruption_is_refused():
    data = records.encode_activation(**_activation())
    for index in range(len(data)):
        corrupted = bytearray(data)
        corrupted[index] ^= 0x10
        raises(records.RecordError, records.decode, bytes(corrupted))
    # Re-sealed with a good CRC but impossible fields: still refused by the kind's own checks.
    import binascii
    import struct
    body = bytearray(data[:-4])
    body[42:45] = (records.MAX_AMOUNT_FEN + 1).to_bytes(3, "big")   # water purse above any limit
    raises(records.RecordError, records.decode, bytes(body) + struct.pack(">I", binascii.crc32(bytes(body)) & 0xFFFFFFFF))
    body = bytearray(data[:-4])
    body[30:34] = bytes(4)                                             # no old serial
    raises(records.RecordError, records.decode, bytes(body) + struct.pack(">I", binascii.crc32(bytes(body)) & 0xFFFFFFFF))
