"""The POS shell on the sim: reader: real card images, the real journal, scripted taps, no server.

Every accepted decision line must name a record that is in the journal, and nothing else may be
there: pulled cards, repeat taps without the cashier, and refusals leave no record.
"""
import io
import json
import os
import subprocess
import sys

import pytest

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.apps.store import TerminalStore
from firmware.core import card_layout, protocol, records, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard

from field_cards import counter_on_image

MASTER_KEY = bytes(range(32))
TERMINAL_ID = 11
UID = bytes.fromhex("04a1b2c3")
TODAY_ANSWER_MS = None


def provisioning():
    keys = sam.site_purpose_keys(MASTER_KEY)
    keys[sam.TERMINAL] = sam.terminal_key(MASTER_KEY, TERMINAL_ID)
    return {"terminal_id": TERMINAL_ID, "merchant_id": 3, "category": 1, "server_url": None,
            "sam_keys": {purpose: key.hex() for purpose, key in keys.items()},
            "dishes": {"rice": ["米饭", 100], "pork": ["红烧肉", 800]}}


def issue_card_image(directory, uid=UID, card_number=1001, account_id=501, generation=1, name="张小明"):
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(MASTER_KEY, include_issuer=True))
    reader = open_reader("sim:")
    card = ClassicCard(uid)
    reader.field.place(card)
    target = reader.poll(100)
    identity = card_layout.Identity(card_number, account_id, generation, card_layout.HOLDER_STUDENT, 20991231)
    card_io.issue_card(reader, issuer, target, identity, name)
    reader.field.pull()
    path = os.path.join(str(directory), "%s.card" % uid.hex())
    card.save(path)
    return path


def seed_cache(data_dir, main_fen=10000, single_fen=5000, daily_fen=30000, deny_entries=()):
    store = TerminalStore(os.path.join(str(data_dir), "terminal.db"))
    answer = {"acked_seq": 0, "server_ms": 0, "config": None, "commands": [],
              "deny": {"version": 1, "entries": list(deny_entries), "more": False},
              "balances": {"version": 1, "more": False,
                           "rows": [[501, "main", main_fen, 0, single_fen, daily_fen],
                                    [502, "main", main_fen, 0, single_fen, daily_fen]]}}
    store.apply_answer(answer, 20250310, TERMINAL_ID)
    store.close()


def shell_on(tmp_path, reader, cache=None, **terminal_options):
    """A POS shell on `reader` without sync, its data under tmp_path/terminal, the card image issued and
    the cache seeded (`cache`: seed_cache keywords) -> (terminal, card_path, out); the caller closes it."""
    data_dir = tmp_path / "terminal"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir, **(cache or {}))
    out = io.StringIO()
    terminal = PosTerminal(provisioning(), str(data_dir), reader, out=out, sync=False, **terminal_options)
    return terminal, card_path, out


@pytest.fixture
def rig(tmp_path):
    terminal, card_path, out = shell_on(tmp_path, open_reader("sim:"))
    yield terminal, card_path, out
    terminal.close()


def lines(out, kind=None):
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]
    return [line for line in parsed if kind is None or line["type"] == kind]


def journal(terminal):
    return [records.decode(bytes(raw)) for _, raw, _ in terminal.store.journal()]


def test_accepted_tap_is_journaled_then_printed(rig):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 1200, "card": card_path})
    decisions = lines(out, "decision")
    assert decisions == [{"type": "decision", "seq": 1, "accepted": True, "reason": "accepted", "amount_fen": 1200,
                          "balance_after_fen": 8800, "card_number": 1001}]
    shown = [line["text"] for line in lines(out, "show")]
    assert shown[-1] == "交易成功 消费12.00元 余额88.00元 张*明"
    stored = journal(terminal)
    assert len(stored) == 1
    assert (stored[0]["seq"], stored[0]["amount_fen"], stored[0]["account_id"], stored[0]["tap_counter"]) == \
        (1, 1200, 501, 1)
    assert stored[0]["terminal_id"] == TERMINAL_ID and stored[0]["merchant_id"] == 3
    assert counter_on_image(card_path) == 1          # the card image keeps the counted tap
    # Order on stdout: the decision line comes after the success display, both after the commit.
    kinds = [line["type"] for line in lines(out)]
    assert kinds.index("decision") > kinds.index("show")


def test_a_refused_amount_is_not_charged_by_the_next_tap(rig):
    """Seen at a canteen till: ¥15.00 keyed, then 999999 fen refused (金额无效, no amount on the screen),
    then a tap. It must ask for an amount and charge nothing, not the earlier ¥15.00."""
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 1500})
    terminal.run_line({"amount_fen": 999999})
    assert lines(out, "show")[-1]["text"] == "金额无效"
    terminal.run_line({"card": card_path})
    assert [(d["seq"], d["accepted"], d["reason"], d["amount_fen"]) for d in lines(out, "decision")] == \
        [(None, False, "enter_amount", 0)]
    assert journal(terminal) == [] and counter_on_image(card_path) == 0
    terminal.run_line({"amount_fen": 1200, "card": card_path})       # a new amount goes through
    assert [(row["seq"], row["amount_fen"]) for row in journal(terminal)] == [(1, 1200)]


def test_a_refusal_shows_the_amount_still_due(rig):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 4000, "card": card_path})
    terminal.run_line({"amount_fen": 3000, "card": card_path})
    terminal.run_line({"amount_fen": 3500, "card": card_path})        # 3000 left in the cache view
    assert lines(out, "show")[-1]["text"] == "余额不足（应付35.00元）"
    assert terminal.machine.amount_fen == 3500 and len(journal(terminal)) == 2


def test_balance_view_includes_own_unacked_taps(rig):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 4000, "card": card_path})
    terminal.run_line({"amount_fen": 3000, "card": card_path})
    terminal.run_line({"amount_fen": 3500, "card": card_path})   # the cache still says 10000
    decisions = lines(out, "decision")
    assert [d["accepted"] for d in decisions] == [True, True, False]
    assert decisions[1]["balance_after_fen"] == 3000
    assert decisions[2]["reason"] == "insufficient_balance"
    assert len(journal(terminal)) == 2


def test_repeat_tap_needs_cashier_then_is_flagged(rig):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 800, "card": card_path})
    terminal.run_line({"amount_fen": 800, "card": card_path})                     # no confirmation
    assert len(journal(terminal)) == 1
    assert "repeat_tap" in [line["code"] for line in lines(out, "show")]
    terminal.run_line({"amount_fen": 800, "card": card_path, "confirm": True})
    stored = journal(terminal)
    assert len(stored) == 2 and stored[1]["flags"] & records.FLAG_CONFIRMED_REPEAT
    assert [(d["seq"], d["reason"]) for d in lines(out, "decision")] == [(1, "accepted"), (None, "cancelled"),
                                                                         (2, "accepted")]


def test_a_quick_repeat_after_a_restart_still_needs_the_cashier(rig, tmp_path):
    """Power cut, crash or firmware update between a payment and the same card tapped again for the
    same amount: the restarted terminal reads the window's payments back from its journal."""
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 800, "card": card_path})
    terminal.close()
    out = io.StringIO()
    again = PosTerminal(provisioning(), str(tmp_path / "terminal"), open_reader("sim:"), out=out, sync=False)
    try:
        again.run_line({"amount_fen": 800, "card": card_path})                     # no confirmation
        assert "repeat_tap" in [line["code"] for line in lines(out, "show")]
        again.run_line({"amount_fen": 900, "card": card_path})                     # another amount: paid
        assert [(row["seq"], row["amount_fen"]) for row in journal(again)] == [(1, 800), (2, 900)]
    finally:
        again.close()


@pytest.mark.parametrize("operation", range(1, 10))
@pytest.mark.parametrize("done", [False, True])
def test_card_pulled_at_any_command_charges_only_with_a_record(rig, operation, done):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 500, "card": card_path, "pull_after": operation, "pull_done": done})
    decisions = lines(out, "decision")
    stored = journal(terminal)
    assert len(decisions) == 1
    if decisions[0]["accepted"]:
        assert decisions[0]["seq"] == 1 and len(stored) == 1
    else:
        assert decisions[0]["reason"] == "tap_again" and stored == []
    # Tapping again settles it: exactly one more record, and the card's counter matches the journal.
    terminal.run_line({"card": card_path} if not decisions[0]["accepted"] else {"amount_fen": 600, "card": card_path})
    stored = journal(terminal)
    assert lines(out, "decision")[-1]["accepted"]
    assert stored[-1]["tap_counter"] == counter_on_image(card_path)


def test_lost_card_is_refused_and_not_journaled(tmp_path):
    data_dir = tmp_path / "t"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir, deny_entries=[[protocol.DENY_CARD, protocol.card_deny_ref(1001, 1), True,
                                        protocol.DENY_REASON_LOST]])
    out = io.StringIO()
    terminal = PosTerminal(provisioning(), str(data_dir), open_reader("sim:"), out=out, sync=False)
    try:
        terminal.run_line({"amount_fen": 500, "card": card_path})
        assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, "card_lost")]
        assert journal(terminal) == []
        assert counter_on_image(card_path) == 0
    finally:
        terminal.close()


def test_foreign_card_is_unknown(rig, tmp_path):
    terminal, _, out = rig
    blank = ClassicCard(bytes.fromhex("04ffeedd"))
    path = str(tmp_path / "blank.card")
    blank.save(path)
    terminal.run_line({"amount_fen": 500, "card": path})
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, "unknown_card")]


def test_over_limit_offline_asks_for_network(rig):
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 6000, "card": card_path, "pin": "123456"})
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, "pin_needs_network")]


def test_dishes_and_english(tmp_path):
    data_dir = tmp_path / "t"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir)
    out = io.StringIO()
    terminal = PosTerminal(provisioning(), str(data_dir), open_reader("sim:"), out=out, sync=False, lang="en")
    try:
        terminal.run_line({"dishes": ["rice", "pork"], "card": card_path})
        assert lines(out, "decision")[0]["amount_fen"] == 900
        assert lines(out, "show")[-1]["text"].startswith("Paid 9.00 yuan")
    finally:
        terminal.close()


def test_journal_survives_restart_and_seq_continues(tmp_path):
    data_dir = tmp_path / "t"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir)
    for amount_fen in (100, 200):
        out = io.StringIO()
        terminal = PosTerminal(provisioning(), str(data_dir), open_reader("sim:"), out=out, sync=False)
        terminal.run_line({"amount_fen": amount_fen, "card": card_path})
        terminal.close()
    store = TerminalStore(str(data_dir / "terminal.db"))
    stored = [records.decode(bytes(raw)) for _, raw, _ in store.journal()]
    store.close()
    assert [(r["seq"], r["amount_fen"], r["tap_counter"]) for r in stored] == [(1, 100, 1), (2, 200, 2)]
    assert stored[1]["time_ms"] > stored[0]["time_ms"]


def run_ykt_terminal(tmp_path, *options):
    """`ykt terminal` as a process on a card image and a seeded cache, fed ¥3.00, an impossible amount
    and ¥4.00 with the same card; its finished process."""
    data_dir = tmp_path / "t"
    data_dir.mkdir()
    cards = tmp_path / "cards"
    cards.mkdir()
    issue_card_image(cards)
    seed_cache(data_dir)
    provision = tmp_path / "provision.json"
    provision.write_text(json.dumps(provisioning()))
    script = "\n".join(json.dumps(line) for line in (
        {"amount_fen": 300, "card": UID.hex()}, {"amount_fen": 99999999, "card": UID.hex()},
        {"amount_fen": 400, "card": UID.hex()}))
    return subprocess.run(
        [sys.executable, "-m", "ykt", "terminal", "--provision", str(provision), "--data-dir", str(data_dir),
         "--reader", "sim:", "--cards-dir", str(cards), "--decisions-only", "--no-sync", *options, "--script", "-"],
        input=script, capture_output=True, text=True, timeout=120)


def test_ykt_terminal_command_runs_a_script(tmp_path):
    result = run_ykt_terminal(tmp_path)
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["seq"], d["accepted"], d["amount_fen"]) for d in decisions] == \
        [(1, True, 300), (None, False, 0), (2, True, 400)]
    assert decisions[1]["reason"] == "enter_amount"      # the impossible amount was refused at the keypad


def test_restart_shows_the_last_committed_tap(rig, tmp_path):
    """A tap committed just before a power cut was never shown: the restarted terminal shows it."""
    terminal, card_path, out = rig
    terminal.run_line({"amount_fen": 1500, "card": card_path})
    data_dir = os.path.dirname(terminal.store.path) if hasattr(terminal.store, "path") else str(tmp_path / "terminal")
    terminal.close()
    again = io.StringIO()
    restarted = PosTerminal(provisioning(), data_dir, open_reader("sim:"), out=again, sync=False)
    try:
        shown = lines(again, "show")
        assert shown and shown[0]["code"] == "last_tap" and shown[0]["seq"] == 1
        assert "上笔交易" in shown[0]["text"] and "15.00" in shown[0]["text"] and "1001" in shown[0]["text"]
    finally:
        restarted.close()


def test_script_lines_do_not_reread_the_configuration(rig, monkeypatch):
    """The configuration changes only when a sync brings a new one; a busy till must not parse it
    again for every line it is fed."""
    terminal, card_path, out = rig
    reads = []
    real_config = terminal.store.config
    monkeypatch.setattr(terminal.store, "config", lambda: reads.append(1) or real_config())
    for amount_fen in (100, 200, 300):
        terminal.run_line({"amount_fen": amount_fen, "card": card_path})
    assert [d["accepted"] for d in lines(out, "decision")] == [True, True, True]
    assert reads == []


def test_ykt_terminal_says_each_accepted_payment_aloud(tmp_path):
    """`--voice DIR`: the screen's sentence after the commit is spoken, without the holder's name (the
    queue hears it), in espeak-ng Mandarin with the sink directory in place of the sound card, each to
    its end; a refusal is not spoken."""
    speaker = tmp_path / "speaker"
    result = run_ykt_terminal(tmp_path, "--voice", str(speaker))
    assert result.returncode == 0, result.stderr
    with open(speaker / "played.jsonl", encoding="utf-8") as stream:
        played = [json.loads(line) for line in stream]
    assert [p["text"] for p in played] == ["交易成功 消费3.00元 余额97.00元", "交易成功 消费4.00元 余额93.00元"]
    assert played[1]["start_s"] >= played[0]["end_s"]                     # never cut off, never overlapping
    assert all(os.path.getsize(speaker / os.path.basename(p["wav"])) > 10000 for p in played)   # real speech


def test_the_servers_dish_menu_replaces_the_provisioning_files_and_bad_rows_are_left_out(tmp_path):
    """The admin console sets a till's menu; it arrives in the sync answer's configuration (the store
    keeps it). A malformed row is dropped, not fatal: the till keeps selling."""
    from firmware.apps.face import Face
    data_dir = tmp_path / "terminal"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir)
    store = TerminalStore(os.path.join(str(data_dir), "terminal.db"))
    store.apply_answer({"acked_seq": 0, "server_ms": 0, "commands": [],
                        "config": {"version": 2, "dishes": {"noodles": ["牛肉面", 1200], "bad": ["汤", -5],
                                                            "worse": "x", "soup": ["汤", 300]}}},
                       20250310, TERMINAL_ID)
    store.close()
    face = Face("pos", "zh", TERMINAL_ID, dishes=provisioning()["dishes"])
    out = io.StringIO()
    terminal = PosTerminal(provisioning(), str(data_dir), open_reader("sim:"), out=out, sync=False, face=face)
    try:
        assert terminal.machine.config["dishes"] == {"noodles": ["牛肉面", 1200], "soup": ["汤", 300]}
        assert terminal.keys.dish_keys == {"f1": "noodles", "f2": "soup"}
        assert [(dish["id"], dish["key"]) for dish in face.snapshot()["dishes"]] == [("noodles", "F1"),
                                                                                     ("soup", "F2")]
        terminal.run_line({"keys": ["f1", "f2"], "card": card_path})
        assert [(row["seq"], row["amount_fen"]) for row in journal(terminal)] == [(1, 1500)]
    finally:
        terminal.close()
