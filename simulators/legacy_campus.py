"""A campus of OLD-system cards and the old card centre's export, made from a seed.

The go-live (seed 004) starts from what the old system leaves behind: cards that carry their money
(firmware/core/legacy_card.py) and the CSV files the old card centre hands over. This builds both,
deterministically, with the oddities a real hand-over has:

    spent_after_export  the card was used at an old terminal after the export: it holds less
    torn                a spend after the export torn at an old terminal: main and backup disagree
    unreadable          a torn card whose other copy is damaged too: no copy can be trusted
    lost                reported lost (挂失) in the export; the card may still turn up
    duplicate_serials   two people, two cards, one 卡号 (the old centre reissued a number)
    water_unregistered  a 小钱包 with money on the card and no row in water_purses.csv
    missing_id_number   no 证件号码 in the export (原系统未录入证件号的师生)

    python -m simulators.legacy_campus --people N --seed S --out DIR

writes DIR/cards/<uid>.card (images in reader_drivers/sim's format, written through the `sim:`
reader with the old layout and keys), DIR/people.csv (姓名, 学工号, 证件号码, 身份, 卡号, 卡状态,
余额(元)) and DIR/water_purses.csv (卡号, 小钱包余额(元)), UTF-8 with BOM, CRLF, yuan with two
decimals, as such exports come out of Excel; DIR/old_master.key (the old system's master key, mode
0600, 32 bytes, as the old vendor hands it over) and DIR/truth.json (what the simulation knows and
the export does not: per card its money, state and oddities). It prints one JSON line of counts.
"""
import argparse
import csv
import hashlib
import json
import os
import random
import sys

from firmware.core import legacy_card, mifare
from reader_drivers import open_reader
from reader_drivers.sim.classic_card import ClassicCard, random_nuid

PEOPLE_MIN = 20
PEOPLE_MAX = 100000
SEED_MAX = 2 ** 63 - 1
OLD_TERMINAL = 301                    # the old canteen terminal the post-export spends went through
MASTER_KEY_FILE = "old_master.key"
PEOPLE_CSV = "people.csv"
WATER_CSV = "water_purses.csv"
TRUTH_JSON = "truth.json"
CARDS_DIR = "cards"

PEOPLE_HEADER = ("姓名", "学工号", "证件号码", "身份", "卡号", "卡状态", "余额(元)")
WATER_HEADER = ("卡号", "小钱包余额(元)")
CATEGORY_NAMES = {legacy_card.TEACHER: "教工", legacy_card.STUDENT: "学生", legacy_card.TEMPORARY: "临时"}
CATEGORY_KEYS = {legacy_card.TEACHER: "teacher", legacy_card.STUDENT: "student", legacy_card.TEMPORARY: "temporary"}
STATUS_NORMAL = "正常"
STATUS_LOST = "挂失"

ODDITIES = ("spent_after_export", "torn", "unreadable", "lost", "duplicate_serials", "water_unregistered",
            "missing_id_number")

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢"
_YI_SURNAMES = ("阿木", "吉克", "沙马", "吉伍", "海来", "俄底")     # Liangshan's Yi families
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉力斌宇浩凯婷雪琳晨欣怡佳俊鹏鑫梓涵子轩雨"
_YI_GIVEN = ("曲布", "伍牛", "阿呷", "拉哈", "日火", "木呷", "石者")
_REGIONS = ("513401", "513422", "513424", "513425", "513431", "510104", "510107", "511302", "500103", "530102")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


class CampusError(ValueError):
    """Options the generator refuses (the message is Chinese, then English)."""


def old_master_key(seed):
    """The old system's master key of a simulated campus: derived from the seed, so runs replay."""
    return hashlib.sha256(b"ykt/legacy-campus/master/%d" % seed).digest()


def load_old_master_key(path):
    with open(path, "rb") as stream:
        key = stream.read(33)
    if len(key) != 32:
        raise CampusError("旧系统主密钥文件长度错误 / old master key file has the wrong size (%s)" % path)
    return key


def yuan(amount_fen):
    """Fen -> '123.45', as the old centre's export writes money."""
    assert amount_fen >= 0
    return "%d.%02d" % divmod(amount_fen, 100)


def id_number_check(first17):
    """The 18th character of a resident ID number (GB 11643-1999, ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS))
    return "10X98765432"[total % 11]


# --- people ---------------------------------------------------------------------------------------

def _name(rng):
    if rng.random() < 0.12:
        return rng.choice(_YI_SURNAMES) + rng.choice(_YI_GIVEN)
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2, 2))))


def _id_number(rng, birth_year):
    first17 = "%s%04d%02d%02d%03d" % (rng.choice(_REGIONS), birth_year, rng.randint(1, 12), rng.randint(1, 28),
                                      rng.randint(1, 999))
    return first17 + id_number_check(first17)


def _category(rng):
    draw = rng.random()
    return legacy_card.TEACHER if draw < 0.12 else legacy_card.TEMPORARY if draw < 0.15 else legacy_card.STUDENT


def _person(rng, category, staff_numbers):
    while True:
        if category == legacy_card.TEACHER:
            staff_number = "%04d%04d" % (rng.randint(1985, 2022), rng.randint(1, 9999))
            birth_year, expiry = rng.randint(1960, 1995), 20301231
            main_fen = min(int(rng.expovariate(1 / 40000.0)), 500000)
        elif category == legacy_card.STUDENT:
            enrolled = rng.randint(2019, 2022)
            staff_number = "%04d%02d%02d%02d" % (enrolled, rng.randint(1, 18), rng.randint(1, 12), rng.randint(1, 60))
            birth_year, expiry = enrolled - rng.randint(17, 20), (enrolled + 4) * 10000 + 701
            main_fen = min(int(rng.expovariate(1 / 6000.0)), 80000)
        else:
            staff_number = "9%07d" % rng.randint(1, 9999999)
            birth_year, expiry = rng.randint(1970, 2000), 20231231
            main_fen = min(int(rng.expovariate(1 / 3000.0)), 30000)
        if staff_number not in staff_numbers:
            staff_numbers.add(staff_number)
            break
    uses_water = category == legacy_card.STUDENT or rng.random() < 0.1
    water_fen = min(int(rng.expovariate(1 / 1200.0)), 20000) if uses_water else 0
    return {"name": _name(rng), "staff_number": staff_number, "id_number": _id_number(rng, birth_year),
            "category": category, "expiry": expiry, "main_fen": main_fen, "main_counter": rng.randint(0, 3000),
            "water_fen": water_fen, "water_counter": rng.randint(1, 900) if uses_water else 0,
            "lost": False, "oddities": []}


def _assign_oddities(rng, people):
    """Disjoint groups of people for the card oddities, at least one of each (three torn, so every
    torn state appears); missing ID numbers fall on anyone."""
    count = len(people)
    sizes = {"torn": max(3, count * 3 // 200), "unreadable": max(1, count // 500),
             "spent_after_export": max(1, count * 4 // 100), "lost": max(1, count * 2 // 100),
             "duplicate_serials": max(1, count // 200)}
    pool = list(range(count))
    rng.shuffle(pool)
    groups = {}
    for oddity in ("torn", "unreadable", "spent_after_export", "lost"):
        groups[oddity], pool = pool[:sizes[oddity]], pool[sizes[oddity]:]
    pairs = sizes["duplicate_serials"]
    groups["duplicate_serials"] = [(pool[2 * i], pool[2 * i + 1]) for i in range(pairs)]
    pool = pool[2 * pairs:]
    water_users = [index for index in pool if people[index]["water_counter"]] or pool[:1]
    groups["water_unregistered"] = water_users[:max(1, count // 100)]
    groups["missing_id_number"] = rng.sample(range(count), max(1, count * 3 // 100))
    return groups


def make_people(rng, count):
    staff_numbers = set()
    people = [_person(rng, _category(rng), staff_numbers) for _ in range(count)]
    serial = 10050000
    for person in people:
        serial += rng.randint(1, 7)
        person["serial"] = serial
    groups = _assign_oddities(rng, people)
    for index in groups["torn"] + groups["unreadable"] + groups["spent_after_export"]:
        person = people[index]
        person["main_fen"] = max(person["main_fen"], rng.randint(1000, 20000))
        person["spend_fen"] = rng.randint(50, min(person["main_fen"], 3000))
    for oddity in ("torn", "unreadable", "spent_after_export", "lost", "water_unregistered", "missing_id_number"):
        for index in groups[oddity]:
            people[index]["oddities"].append(oddity)
    for turn, index in enumerate(groups["torn"]):
        people[index]["torn_after_writes"] = turn % 3 + 1     # 1: before the commit; 2, 3: after it
    for index in groups["lost"]:
        people[index]["lost"] = True
    for index in groups["water_unregistered"]:
        people[index]["water_fen"] = max(people[index]["water_fen"], rng.randint(100, 3000))
        people[index]["water_counter"] = max(people[index]["water_counter"], 1)
    for index in groups["missing_id_number"]:
        people[index]["id_number"] = ""
    for first, second in groups["duplicate_serials"]:
        people[second]["serial"] = people[first]["serial"]
        people[first]["oddities"].append("duplicate_serials")
        people[second]["oddities"].append("duplicate_serials")
    uids = set()
    for person in people:
        uid = random_nuid(rng)
        while uid in uids:
            uid = random_nuid(rng)
        uids.add(uid)
        person["uid"] = uid
    return people, groups


# --- cards, through the sim: reader ----------------------------------------------------------------

def write_steps(reader, master_key, uid, steps):
    """Write a legacy_card plan as an old terminal did: key B of each sector as the plan reaches it."""
    sector = None
    for block, data in steps:
        if mifare.sector_of(block) != sector:
            sector = mifare.sector_of(block)
            reader.authenticate(mifare.trailer_block(sector), mifare.B,
                                legacy_card.sector_key(master_key, uid, sector, mifare.B))
        reader.write_block(block, data)


def read_purse_blocks(reader, master_key, uid, purse):
    """The purse's four blocks read with key A, in legacy_card.read_purse's order."""
    blocks = {}
    spec = legacy_card.PURSES[purse]
    for copy in (legacy_card.MAIN_COPY, legacy_card.BACKUP_COPY):
        sector = spec.sector(copy)
        reader.authenticate(mifare.trailer_block(sector), mifare.A, legacy_card.sector_key(master_key, uid, sector,
                                                                                           mifare.A))
        for block in (spec.value_block(copy), spec.record_block(copy)):
            blocks[block] = reader.read_block(block)
    return [blocks[block] for block in spec.blocks()]


def _issue(reader, master_key, person):
    identity = legacy_card.OldIdentity(person["serial"], person["staff_number"], person["category"],
                                       person["expiry"])
    plan = legacy_card.issue_plan(master_key, person["uid"], identity, person["name"].encode("gbk"),
                                  {legacy_card.MAIN_PURSE: (person["main_fen"], person["main_counter"]),
                                   legacy_card.WATER_PURSE: (person["water_fen"], person["water_counter"])})
    for sector, writes in plan:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, mifare.TRANSPORT_KEY)
        for block, data in writes:
            reader.write_block(block, data)


def _after_export(reader, master_key, person):
    """What happened to the card after the export: a spend, torn or whole, and damage."""
    if "spend_fen" not in person:
        return
    uid = person["uid"]
    blocks = read_purse_blocks(reader, master_key, uid, legacy_card.MAIN_PURSE)
    steps = legacy_card.write_plan(*blocks, person["main_fen"] - person["spend_fen"], terminal=OLD_TERMINAL)
    if "spent_after_export" in person["oddities"]:
        write_steps(reader, master_key, uid, steps)
    elif "torn" in person["oddities"]:
        write_steps(reader, master_key, uid, steps[:person["torn_after_writes"]])
    else:   # unreadable: torn before the commit, and the main copy's value block damaged since
        write_steps(reader, master_key, uid, steps[:1])
        main_block = legacy_card.PURSES[legacy_card.MAIN_PURSE].value_block(legacy_card.MAIN_COPY)
        damaged = bytearray(mifare.encode_value_block(person["main_fen"], main_block))
        damaged[5] ^= 0x10
        write_steps(reader, master_key, uid, [(main_block, bytes(damaged))])


def make_card(reader, master_key, person):
    """Issue one old card as the old centre did, then live its life after the export -> ClassicCard."""
    card = ClassicCard(person["uid"])
    reader.field.place(card)
    if reader.poll(100) is None:
        raise RuntimeError("the sim: field lost the card it was just given")
    _issue(reader, master_key, person)
    _after_export(reader, master_key, person)
    reader.field.pull()
    return card


def card_reading(card, purse):
    """The rule's verdict on a card image's purse, read from its memory (the simulation's own view)."""
    return legacy_card.inspect_purse(*[card.dump_block(block) for block in legacy_card.PURSES[purse].blocks()],
                                     purse=purse)


# --- the export -----------------------------------------------------------------------------------

def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream)       # CRLF line ends, as Excel writes them
        writer.writerow(header)
        writer.writerows(rows)


def _write_private(path, data):
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def generate(out_dir, people_count, seed):
    """Write the campus into out_dir (created; refused when it holds anything) -> the summary dict."""
    if not PEOPLE_MIN <= people_count <= PEOPLE_MAX:
        raise CampusError("人数须在 %d 到 %d 之间 / --people must be %d..%d"
                          % (PEOPLE_MIN, PEOPLE_MAX, PEOPLE_MIN, PEOPLE_MAX))
    if not 0 <= seed <= SEED_MAX:
        raise CampusError("种子须为非负整数 / --seed must be 0..2**63-1")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise CampusError("输出目录不是空目录 / --out must be a new or empty folder: %s" % out_dir)
    os.makedirs(os.path.join(out_dir, CARDS_DIR), exist_ok=True)
    rng = random.Random(seed)
    master_key = old_master_key(seed)
    people, groups = make_people(rng, people_count)
    reader = open_reader("sim:")
    truth = []
    for person in people:
        card = make_card(reader, master_key, person)
        file_name = "%s/%s.card" % (CARDS_DIR, person["uid"].hex())
        card.save(os.path.join(out_dir, file_name))
        truth.append(_truth(person, card, file_name))
    export = sorted(people, key=lambda person: (person["serial"], person["staff_number"]))
    _write_csv(os.path.join(out_dir, PEOPLE_CSV), PEOPLE_HEADER, [
        (p["name"], p["staff_number"], p["id_number"], CATEGORY_NAMES[p["category"]], str(p["serial"]),
         STATUS_LOST if p["lost"] else STATUS_NORMAL, yuan(p["main_fen"])) for p in export])
    _write_csv(os.path.join(out_dir, WATER_CSV), WATER_HEADER, [
        (str(p["serial"]), yuan(p["water_fen"])) for p in export
        if p["water_counter"] and "water_unregistered" not in p["oddities"]])
    _write_private(os.path.join(out_dir, MASTER_KEY_FILE), master_key)
    summary = summarise(truth, groups, seed)
    with open(os.path.join(out_dir, TRUTH_JSON), "w", encoding="utf-8") as stream:
        json.dump({"seed": seed, "summary": summary, "cards": truth}, stream, ensure_ascii=False, sort_keys=True,
                  indent=1)
        stream.write("\n")
    return dict(summary, out=out_dir)


def _truth(person, card, file_name):
    main = card_reading(card, legacy_card.MAIN_PURSE)
    water = card_reading(card, legacy_card.WATER_PURSE)
    spent_fen = person.get("spend_fen", 0)
    committed = main.state != legacy_card.UNREADABLE and main.balance_fen != person["main_fen"]
    return {"uid": person["uid"].hex(), "file": file_name, "serial": person["serial"],
            "staff_number": person["staff_number"], "name": person["name"],
            "category": CATEGORY_KEYS[person["category"]], "lost": person["lost"], "oddities": person["oddities"],
            "export_main_fen": person["main_fen"], "card_main_fen": main.balance_fen, "main_state": main.state,
            # what the purse holds in truth: for an unreadable card, the last balance a copy committed
            "true_main_fen": main.balance_fen if main.balance_fen is not None else person["main_fen"],
            "spent_after_export_fen": spent_fen if committed else 0,
            "card_water_fen": water.balance_fen, "water_registered": bool(person["water_counter"]) and
            "water_unregistered" not in person["oddities"]}


def summarise(truth, groups, seed):
    readable = [card for card in truth if card["card_main_fen"] is not None]
    states = {}
    for card in truth:
        if "torn" in card["oddities"]:
            states[card["main_state"]] = states.get(card["main_state"], 0) + 1
    categories = {}
    for card in truth:
        categories[card["category"]] = categories.get(card["category"], 0) + 1
    summary = {"seed": seed, "people": len(truth), "cards": len(truth),
               "teachers": categories.get("teacher", 0), "students": categories.get("student", 0),
               "temporary": categories.get("temporary", 0),
               "card_main_fen": sum(card["card_main_fen"] for card in readable),
               "card_water_fen": sum(card["card_water_fen"] for card in truth),
               "export_main_fen": sum(card["export_main_fen"] for card in truth),
               "export_water_fen": sum(card["card_water_fen"] for card in truth if card["water_registered"]),
               "unreadable_true_main_fen": sum(card["true_main_fen"] for card in truth
                                               if card["card_main_fen"] is None),
               "balance_differs": sum(1 for card in readable if card["card_main_fen"] != card["export_main_fen"]),
               "spent_after_export_fen": sum(card["spent_after_export_fen"] for card in truth),
               "torn_by_state": states,
               "water_unregistered_fen": sum(card["card_water_fen"] for card in truth
                                             if "water_unregistered" in card["oddities"])}
    for oddity in ODDITIES:
        summary[oddity] = len(groups[oddity])
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m simulators.legacy_campus",
                                     description="旧系统校园卡与旧一卡通中心导出数据 / a campus of old-system cards "
                                                 "and the old card centre's export")
    parser.add_argument("--people", type=int, required=True, help="人数 / people (%d..%d)" % (PEOPLE_MIN, PEOPLE_MAX))
    parser.add_argument("--seed", type=int, required=True, help="随机种子 / seed: the same seed, the same campus")
    parser.add_argument("--out", required=True, help="输出目录（新建或空）/ output folder, new or empty")
    options = parser.parse_args(argv)
    try:
        summary = generate(options.out, options.people, options.seed)
    except CampusError as error:
        parser.error(str(error))
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
