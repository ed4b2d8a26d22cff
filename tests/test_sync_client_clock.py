"""The terminal's clock against the real sync server (server subprocess): a time stuck in the future
(left by one bad answer before the clock refused such jumps) is set right by the server's set_time, so
cards stop looking expired, and the corrected floor survives a restart."""
import io
import json
import os

import pytest
import time

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.apps.store import TerminalStore
from firmware.core import card_layout, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from sync_server import registry
from server_process import running_server

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

UID = bytes.fromhex("04a1b2c9")
YEAR_MS = 365 * 24 * 3600 * 1000


def issue_card(server, conn, directory):
    _person, account_id = registry.add_person(conn, "王小明", card_layout.HOLDER_STUDENT, staff_number="20240009")
    identity, holder = registry.issue_card_record(conn, account_id, UID)
    registry.recharge(conn, account_id, 20000)
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(server.master_key(), include_issuer=True))
    reader = open_reader("sim:")
    card = ClassicCard(UID)
    reader.field.place(card)
    card_io.issue_card(reader, issuer, reader.poll(100), identity, holder)
    reader.field.pull()
    path = str(directory / "card.card")
    card.save(path)
    return path


def decisions(out):
    return [line for line in map(json.loads, out.getvalue().splitlines()) if line["type"] == "decision"]


def test_set_time_brings_a_clock_stuck_in_the_future_back(tmp_path):
    with running_server(tmp_path / "server") as server:
        conn = server.connect()
        terminal_id = registry.register_terminal(conn, registry.add_merchant(conn, "第一食堂", "Canteen 1", 1))
        document = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
        card_path = issue_card(server, conn, tmp_path)
        data_dir = tmp_path / "terminal"
        os.makedirs(str(data_dir))
        future_ms = int(time.time() * 1000) + 30 * YEAR_MS      # past every card's expiry day
        store = TerminalStore(str(data_dir / "terminal.db"))
        store.save_clock(future_ms, future_ms - int(time.time() * 1000))
        store.close()

        out = io.StringIO()
        terminal = PosTerminal(document, str(data_dir), open_reader("sim:"), out=out)
        try:
            assert terminal.sync_now().online
            now_ms = int(time.time() * 1000)
            assert terminal.clock.peek_ms() < now_ms + YEAR_MS
            terminal.run_line({"amount_fen": 700, "card": card_path})
            decision = decisions(out)[-1]
            assert (decision["accepted"], decision["reason"]) == (True, "accepted")
        finally:
            terminal.close()
        # What was persisted is the corrected floor: a restart does not bring the future back.
        store = TerminalStore(str(data_dir / "terminal.db"))
        try:
            assert store.clock().floor_ms < now_ms + YEAR_MS
        finally:
            store.close()
        conn.close()
