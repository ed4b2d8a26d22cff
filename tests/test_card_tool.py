"""`ykt card` for technicians: uid, info and dump on every reader driver (`--reader` picks them; on
sim: the card comes from --card-file, elsewhere it is placed in the rig's card slot and the tool opens
the rig's reader URL), `readers` through the real pcscd, refusals with their exit codes, and no key
ever on the screen.
"""
import json
import subprocess
import sys

import pytest

from firmware.apps import card_io, card_tool
from firmware.core import card_layout, mifare, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from ykt import cli

MASTER_KEY = bytes(range(150, 182))
OTHER_SITE_KEY = bytes(range(1, 33))
TERMINAL_ID = 31
UID4 = bytes.fromhex("5eed0001")
UID7 = bytes.fromhex("04112233445566")
IDENTITY = card_layout.Identity(4242, 777, 2, card_layout.HOLDER_STAFF, 20301231)
NAME = "欧阳明月"


def provisioning(master_key=MASTER_KEY):
    keys = sam.site_purpose_keys(master_key)
    keys[sam.TERMINAL] = sam.terminal_key(master_key, TERMINAL_ID)
    return {"terminal_id": TERMINAL_ID, "merchant_id": 1, "category": 1,
            "sam_keys": {purpose: key.hex() for purpose, key in keys.items()}}


def issued_card(uid=UID4, master_key=MASTER_KEY, taps=0):
    """A card issued by the service hall (on a sim: field), tapped `taps` times."""
    reader = open_reader("sim:")
    card = ClassicCard(uid)
    reader.field.place(card)
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(master_key, include_issuer=True))
    card_io.issue_card(reader, issuer, reader.poll(100), IDENTITY, NAME)
    for counted in range(taps):
        card_io.count_tap(reader, issuer, reader.poll(100), counted)
    reader.field.pull()
    return card


@pytest.fixture
def provision_file(tmp_path):
    path = tmp_path / "provision.json"
    path.write_text(json.dumps(provisioning()))
    path.chmod(0o600)
    return path


def run_tool(capsys, argv):
    """`ykt card ...` in this process -> (exit code, stdout, stderr)."""
    code = cli.main(["card"] + list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tool(reader_rig, capsys, tmp_path):
    """tool(card, command, *options): runs the command with `card` in front of the rig's reader."""
    def run(card, command, *options):
        if reader_rig.name == "sim":
            image = tmp_path / "card.bin"
            card.save(str(image))
            where = ["--reader", "sim:", "--card-file", str(image)]
        else:
            reader_rig.slot.place(card)
            where = ["--reader", reader_rig.url]
        try:
            return run_tool(capsys, [command] + where + ["--timeout-ms", "5000"] + list(options))
        finally:
            if reader_rig.name != "sim":
                reader_rig.slot.pull()
    return run


def secrets_of(card_uid, master_key=MASTER_KEY):
    """Every key a careless tool could print, as hex: provisioning keys and this card's sector keys."""
    document = provisioning(master_key)
    holder = sam.SoftwareSAM(sam.site_purpose_keys(master_key, include_issuer=True))
    keys = set(document["sam_keys"].values()) | {mifare.TRANSPORT_KEY.hex()}
    for sector in range(mifare.SECTORS):
        for key_type in (mifare.A, mifare.B):
            keys.add(holder.card_sector_key(card_uid, sector, key_type).hex())
    return keys


# --- on every driver ------------------------------------------------------------------------------

@pytest.mark.parametrize("uid, atqa", [(UID4, "0004"), (UID7, "0044")], ids=["4-byte-uid", "7-byte-uid"])
def test_uid_shows_uid_atqa_and_sak(tool, uid, atqa):
    code, out, _ = tool(issued_card(uid), "uid", "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["uid"], shown["atqa"], shown["sak"], shown["type"]) == (uid.hex(), atqa, "08", "MIFARE Classic 1K")
    code, out, _ = tool(issued_card(uid), "uid")
    assert code == 0 and out.startswith("卡号 UID %s  ATQA %s  SAK 08" % (uid.hex(), atqa))


def test_info_shows_identity_masked_name_and_tap_counter(tool, provision_file):
    code, out, _ = tool(issued_card(taps=3), "info", "--provision", str(provision_file), "--json")
    assert code == 0
    assert json.loads(out) == {"uid": UID4.hex(), "atqa": "0004", "sak": "08", "type": "MIFARE Classic 1K",
                               "card_number": 4242, "account_id": 777, "generation": 2,
                               "holder_category": card_layout.HOLDER_STAFF, "expiry_yyyymmdd": 20301231,
                               "name_masked": "欧**月", "tap_counter": 3}
    code, out, _ = tool(issued_card(taps=3), "info", "--provision", str(provision_file), "--lang", "en")
    assert code == 0
    assert "card number: 4242" in out and "holder: staff" in out and "tap counter: 3" in out
    assert NAME not in out and "name: 欧**月" in out


def test_dump_reads_every_sector_with_known_keys_and_shows_no_key(tool, provision_file):
    card = issued_card(taps=2)
    code, out, _ = tool(card, "dump", "--provision", str(provision_file), "--json")
    assert code == 0
    sectors = json.loads(out)["sectors"]
    assert [s["key"] for s in sectors] == \
        ["transport_a", "diversified_a", "diversified_a"] + ["transport_a"] * (mifare.SECTORS - 3)
    blocks = {b["block"]: b for s in sectors for b in s["blocks"]}
    assert len(blocks) == mifare.BLOCKS
    for block in range(mifare.BLOCKS):
        if not mifare.is_trailer(block):
            assert blocks[block]["hex"] == card.dump_block(block).hex()    # what the card holds
    assert blocks[card_layout.COUNTER_BLOCK]["value"] == card_layout.COUNTER_START - 2
    assert blocks[7]["hex"] == "-" * 12 + card.dump_block(7)[6:10].hex() + "-" * 12
    assert blocks[7]["access"] == ["100", "100", "100", "011"]
    assert blocks[3]["access"] == ["000", "000", "000", "001"]           # a blank sector, as delivered
    code, text, _ = tool(card, "dump", "--provision", str(provision_file))
    assert code == 0 and "扇区  1  密钥：本系统密钥A" in text and "扇区  0  密钥：出厂密钥A" in text
    for secret in secrets_of(UID4):
        assert secret not in out and secret not in text


def test_dump_without_keys_marks_the_sectors_it_cannot_open(tool):
    code, text, _ = tool(issued_card(), "dump", "--lang", "en")
    assert code == 0
    assert "sector  1  cannot authenticate with any known key" in text
    assert "sector  2  cannot authenticate with any known key" in text
    assert "sector  3  key: transport key A" in text
    assert mifare.TRANSPORT_KEY.hex() not in text       # transport sectors' key B is readable: masked


def test_info_on_another_sites_card_is_refused_as_unknown(tool, provision_file):
    code, out, err = tool(issued_card(master_key=OTHER_SITE_KEY), "info", "--provision", str(provision_file))
    assert code == card_tool.EXIT_NOT_OUR_CARD and out == ""
    assert "密钥不符：不是本系统的卡片" in err


# --- sim: only: refusals ----------------------------------------------------------------------------

def test_info_on_a_blank_card_says_so(tmp_path, capsys, provision_file):
    image = tmp_path / "blank.bin"
    ClassicCard(UID4).save(str(image))
    code, out, err = run_tool(capsys, ["info", "--card-file", str(image), "--provision", str(provision_file),
                                       "--json", "--lang", "en"])
    assert code == card_tool.EXIT_NOT_OUR_CARD
    assert "blank card" in json.loads(out)["error"] and "blank card" in err


def test_no_card_in_the_field_is_exit_1(capsys):
    code, _, err = run_tool(capsys, ["uid", "--timeout-ms", "50"])
    assert code == card_tool.EXIT_NO_CARD and "50 毫秒内未检测到卡片" in err
    assert err.startswith("请刷卡")                 # said while it waited, on stderr: stdout is the result


def test_unusable_provisioning_file_and_reader_have_their_exit_codes(tmp_path, capsys):
    image = tmp_path / "card.bin"
    issued_card().save(str(image))
    missing = tmp_path / "missing.json"
    code, _, err = run_tool(capsys, ["info", "--card-file", str(image), "--provision", str(missing)])
    assert code == card_tool.EXIT_FILE == 4 and "无法读取终端配置文件" in err
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    code, _, err = run_tool(capsys, ["info", "--card-file", str(image), "--provision", str(garbled)])
    assert code == card_tool.EXIT_MALFORMED == 7 and "格式错误" in err
    code, _, err = run_tool(capsys, ["uid", "--reader", "nosuch:", "--lang", "en"])
    assert code == card_tool.EXIT_READER == 5 and "cannot open the reader" in err


def test_card_file_needs_the_sim_reader(tmp_path, capsys):
    from simulators.pn532_emulator import Pn532Emulator
    image = tmp_path / "card.bin"
    issued_card().save(str(image))
    with Pn532Emulator() as emulator:
        code, _, err = run_tool(capsys, ["uid", "--reader", "pn532:" + emulator.path, "--card-file", str(image)])
    assert code == card_tool.EXIT_REFUSED and "--card-file 只用于模拟读卡器" in err


# --- a separate process, the way a technician runs it -------------------------------------------

def test_ykt_card_info_as_a_command_on_the_pn532_emulator(provision_file):
    from simulators.pn532_emulator import Pn532Emulator
    with Pn532Emulator() as emulator:
        emulator.field.place(issued_card(UID7, taps=1))
        result = subprocess.run([sys.executable, "-m", "ykt", "card", "info", "--reader", "pn532:" + emulator.path,
                                 "--provision", str(provision_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "卡号: 4242" in result.stdout and "刷卡次数: 1" in result.stdout and "身份: 教职工" in result.stdout


@pytest.mark.readers("pcsc")
def test_readers_lists_the_pcsc_readers_pcscd_knows(reader_name, reader_rig, capsys):
    code, out, _ = run_tool(capsys, ["readers", "--json"])
    assert code == 0
    listed = json.loads(out)
    assert {"kind": "pcsc", "url": "pcsc:Virtual PCD 00 00", "name": "Virtual PCD 00 00"} in listed["readers"]
    assert "pcsc" not in listed["problems"]
    code, out, _ = run_tool(capsys, ["readers"])
    assert "pcsc:Virtual PCD 00 01" in out
