"""tools/flash_board.py: the ESP32 water dispenser flashed with the real mpremote onto the virtual
board (the real MicroPython behind a pty, tools/virtual_board.py), provisioned by the real server.

After flashing and its reset the board runs firmware/esp32/dispenser_main.py unchanged; a phone
(simulators/phone_water.py's WaterSession, the app's own logic) gets a grant from the server for the
challenge it read over the board's Bluetooth, the water flows (flow meter pulses on the control
channel), End closes the valve, the receipt goes back to the server, which charges the cardholder
the right fen; the board's journal, copied off with mpremote, holds the session's record. A flash
killed half-way, or a board that goes away mid-flash, is finished by the next run, every file
verified by its hash on the board. The water key appears in no output.
"""
import asyncio
import hashlib
import json
import os
import subprocess
import sys

import pytest

from firmware.core import card_layout, records, wallets, water_grants as wg
from simulators.phone import PhoneApp
from simulators.phone_ble import LINK_LOST, NO_ANSWER, PhoneBleError
from simulators.phone_water import WaterSession
from sync_server import pin_rules, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import flash_board  # noqa: E402
from virtual_board import BoardControlError, VirtualBoard  # noqa: E402
from test_virtual_board import until as wait_until  # noqa: E402

DEADLINE_S = 30         # giving up on an answer, not a performance bound
VALVE_PIN = 4           # dispenser_main's wiring
METER_PIN = 5
PRICE_FEN_PER_LITRE = 30
PULSES_PER_LITRE = 450
WATER_FEN = 500
MAX_NOTES = 1000      # progress notes while a litre runs (one per tick); a bound, not a count
FLASH_SCRIPT = os.path.join(ROOT, "tools", "flash_board.py")


def until(what, predicate):
    return wait_until(what, predicate, DEADLINE_S)


def register(server, tmp_path, category, name):
    conn = server.connect()
    try:
        merchant_id = registry.add_merchant(conn, name, name, category)
    finally:
        conn.close()
    out = tmp_path / ("%s.json" % name)
    completed = server.ykt("hall", "terminal-register", "--merchant", str(merchant_id), "--out", str(out),
                           "--server-url", server.url)
    assert completed.returncode == 0, completed.stderr
    with open(out, encoding="utf-8") as handle:
        return str(out), json.load(handle)


@pytest.fixture(scope="module")
def dispenser(live_server, tmp_path_factory):
    """A water dispenser registered on the server: (provisioning file, its document)."""
    return register(live_server, tmp_path_factory.mktemp("provisioning"), wallets.CATEGORY_WATER, "开水房")


def expected_hashes(document, config):
    files = [(path, flash_board.open_bytes(local)) for path, local in flash_board.board_files()]
    main = files.pop()
    files += [(flash_board.CONFIG_FILE, flash_board.board_config(document, config)), main]
    return [(path, hashlib.sha256(data).hexdigest()) for path, data in files]


def host_hashes(board):
    found = {}
    for folder, _dirs, names in os.walk(board.fs_dir):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, board.fs_dir)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def mpremote(board, *args):
    completed = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.path, *args], capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout + completed.stderr


class BoardLink:
    """What WaterSession asks of a phone's link to a dispenser (simulators/phone_ble.py's DispenserLink),
    over the virtual board's radio: its control channel plays the phone's Bluetooth."""

    def __init__(self, control):
        self.board = control
        self.conn = control.connect()
        self.notes = []

    async def _radio(self, function, *args):
        try:
            return await asyncio.to_thread(function, *args)
        except BoardControlError as error:
            if error.att_error is not None:
                raise PhoneBleError.refused(error.att_error)
            raise PhoneBleError(LINK_LOST, detail=str(error))

    async def read_challenge(self):
        return wg.decode_challenge(await self._radio(self.board.read, self.conn, wg.CHALLENGE_UUID))

    async def write_grant(self, grant_bytes, start=True):
        await self._radio(self.board.write, self.conn, wg.GRANT_UUID,
                          bytes(grant_bytes) + (bytes([wg.CONTROL_START]) if start else b""))

    async def control(self, code):
        await self._radio(self.board.write, self.conn, wg.CONTROL_UUID, bytes([code]))

    async def next_progress(self, timeout_ms):
        if not self.notes:
            notes, connected = await self._radio(self.board.notifications, self.conn, timeout_ms)
            self.notes = [wg.decode_progress(value) for uuid, value in notes if uuid == wg.PROGRESS_UUID]
            if not self.notes:
                raise PhoneBleError(NO_ANSWER if connected else LINK_LOST, detail="progress")
        return self.notes.pop(0)

    async def dispensing(self):
        """The notes until the valve is open and water is counted."""
        while True:
            note = await self.next_progress(DEADLINE_S * 1000)
            if note.state == wg.PROGRESS_DISPENSING:
                return note

    async def read_receipt(self):
        return await self._radio(self.board.read, self.conn, wg.RECEIPT_UUID)

    async def disconnect(self):
        await self._radio(self.board.disconnect, self.conn)


def holder(server):
    """A student with WATER_FEN in the water wallet, bound to a phone app."""
    staff_number, id_number = "E32001", "110101199003070019"
    conn = server.connect()
    try:
        _person, account_id = registry.add_person(conn, "刷机测试", card_layout.HOLDER_STUDENT, id_number=id_number,
                                                  staff_number=staff_number)
        registry.recharge(conn, account_id, WATER_FEN, wallet="water")
    finally:
        conn.close()
    app = PhoneApp(server.url, "app-esp32-water")
    app.bind("刷机测试", staff_number, pin_rules.initial_pin(id_number, staff_number))
    return app, account_id


def water_balance(server, account_id):
    conn = server.connect()
    try:
        return registry.balances_of(conn, account_id)["water"]
    finally:
        conn.close()


def test_a_flashed_board_serves_a_phone_and_the_server_charges_the_session(live_server, dispenser, tmp_path):
    provisioning_path, document = dispenser
    config = {"price_fen_per_litre": PRICE_FEN_PER_LITRE, "pulses_per_litre": PULSES_PER_LITRE}
    lines = []
    with VirtualBoard(tmp_path / "flash", log_path=tmp_path / "board.log") as board:
        hashes = flash_board.flash_board(board.path, document, config, progress=lines.append)
        assert hashes == expected_hashes(document, config)
        on_host = host_hashes(board)
        assert all(on_host[path] == digest for path, digest in hashes), "what the board verified is on its flash"
        assert lines[0].startswith("连接开发板") and lines[-1].startswith("重启开发板"), "Chinese first"
        assert any(line.startswith("aioble 已在开发板上") for line in lines), "frozen on the virtual board"

        with board.control() as control:
            until("the dispenser advertising", lambda: control.scan()["advertising"])
            app, account_id = holder(live_server)
            link = BoardLink(control)
            session = WaterSession(app, link)

            async def drink():
                cap_fen = await session.start()
                await link.dispensing()
                assert control.pin(VALVE_PIN) == 1, "the valve is open"
                control.pulses(METER_PIN, PULSES_PER_LITRE)          # one litre through the meter
                for _ in range(MAX_NOTES):
                    note = await link.next_progress(DEADLINE_S * 1000)
                    if note.ml >= 1000:
                        break
                assert (note.state, note.ml, note.fen) == (wg.PROGRESS_DISPENSING, 1000, PRICE_FEN_PER_LITRE)
                receipt = await session.end()
                await link.disconnect()
                return cap_fen, receipt

            cap_fen, receipt = asyncio.run(drink())
            assert control.pin(VALVE_PIN) == 0, "End closed the valve"
        assert (receipt.ml, receipt.fen, receipt.end_reason) == (1000, PRICE_FEN_PER_LITRE, wg.END_BUTTON)
        assert receipt.dispenser_id == document["terminal_id"] and cap_fen >= receipt.fen
        assert session.settlement is not None
        assert water_balance(live_server, account_id) == WATER_FEN - PRICE_FEN_PER_LITRE

        journal = tmp_path / "journal.bin"
        mpremote(board, "fs", "cp", ":water_journal.bin", str(journal))
        data = journal.read_bytes()

        # flashed again while the dispenser runs (its watchdog armed): a new price, the rest as it is
        again = []
        dearer = dict(config, price_fen_per_litre=PRICE_FEN_PER_LITRE + 10)
        assert flash_board.flash_board(board.path, document, dearer, progress=again.append) == \
            expected_hashes(document, dearer)
        assert any(line.startswith("停用开发板上的程序") for line in again), again
        assert [line for line in again if line.startswith("写入")] == \
            ["写入 dispenser.json（含密钥）（%d 字节）/ writing dispenser.json (holds the key) (%d bytes)"
             % ((len(flash_board.board_config(document, dearer)),) * 2)]
        with board.control() as control:
            until("the dispenser advertising again", lambda: control.scan()["advertising"])
        lines += again
    assert len(data) == records.RECORD_SIZE, "one session, one record"
    record = records.decode(data)
    assert (record["kind"], record["terminal_id"], record["account_id"], record["tap_counter"], record["amount_fen"]) \
        == (records.KIND_WATER_GRANT, document["terminal_id"], account_id, session.grant["grant_id"],
            PRICE_FEN_PER_LITRE)
    assert records.water_fields(data)[0] == 1000
    key = document["sam_keys"]["water"]
    log = (tmp_path / "board.log").read_text(encoding="utf-8", errors="replace")
    for text in lines + [repr(hashes), log]:
        assert key.lower() not in text.lower()


def flash_process(board, provisioning_path, *extra):
    return subprocess.Popen([sys.executable, FLASH_SCRIPT, "--port", board.path, "--provision", provisioning_path,
                             "--set", "price_fen_per_litre=%d" % PRICE_FEN_PER_LITRE, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_flash_killed_half_way_is_finished_by_the_next_run(dispenser, tmp_path):
    provisioning_path, document = dispenser
    with VirtualBoard(tmp_path / "flash") as board:
        first = flash_process(board, provisioning_path, "--no-reset")
        written = []
        for line in first.stdout:
            written += [line] if line.startswith("写入") else []
            if len(written) == 4:
                first.kill()
                break
        first.communicate(timeout=60)
        assert not os.path.exists(os.path.join(board.fs_dir, "main.py")), "main.py comes last"
        second = flash_process(board, provisioning_path)
        output, errors = second.communicate(timeout=120)
        assert second.returncode == 0, output + errors
        assert sum(line.startswith("已是最新") for line in output.splitlines()) >= 3, output
        reported = [line.split("  ") for line in output.splitlines() if len(line.split("  ")) == 2]
        expected = expected_hashes(document, {"price_fen_per_litre": PRICE_FEN_PER_LITRE})
        assert [(path, digest) for digest, path in reported] == expected
        on_host = host_hashes(board)
        assert all(on_host[path] == digest for path, digest in expected)
    key = document["sam_keys"]["water"]
    assert key not in output + errors and key not in "".join(written)


def test_a_board_that_goes_away_mid_flash_is_reported_and_finished_later(dispenser, tmp_path):
    _provisioning_path, document = dispenser
    config = {"price_fen_per_litre": PRICE_FEN_PER_LITRE}
    board = VirtualBoard(tmp_path / "flash").start()
    writes = []

    def unplug_after_three(line):
        writes.extend([line] if line.startswith("写入") else [])
        if len(writes) == 3:
            board.stop()                     # the cable is pulled while the third file is written

    try:
        with pytest.raises(flash_board.FlashError) as lost:
            flash_board.flash_board(board.path, document, config, progress=unplug_after_three)
    finally:
        board.stop()
    assert "连接中断" in lost.value.zh and "connection to the board was lost" in lost.value.en
    assert "run again" in lost.value.en and document["sam_keys"]["water"] not in str(lost.value)
    with VirtualBoard(tmp_path / "flash") as again:
        lines = []
        hashes = flash_board.flash_board(again.path, document, config, progress=lines.append, reset=False)
        assert hashes == expected_hashes(document, config)
        assert sum(line.startswith("已是最新") for line in lines) >= 2, lines


def test_only_a_water_dispensers_provisioning_is_flashed(live_server, dispenser, tmp_path):
    _path, canteen = register(live_server, tmp_path, wallets.CATEGORY_CANTEEN, "二食堂")
    with pytest.raises(flash_board.FlashError) as refused:
        flash_board.flash_board("/dev/no-such-board", canteen, {})
    assert "不是开水机" in refused.value.zh and "not a water dispenser" in refused.value.en
    _path, water = dispenser
    with pytest.raises(flash_board.FlashError) as unknown:
        flash_board.flash_board("/dev/no-such-board", water, {"price_per_litre": 30})
    assert "price_fen_per_litre" in unknown.value.en
    with pytest.raises(flash_board.FlashError) as absent:
        flash_board.flash_board("/dev/no-such-board", water, {}, progress=lambda line: None)
    assert "/dev/no-such-board" in absent.value.zh and "cannot open the serial port" in absent.value.en
