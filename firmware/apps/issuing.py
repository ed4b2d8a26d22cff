"""The service hall's issuing station (发卡机): put a blank card on the reader, write the card record.

The hall's command line (`ykt hall card-issue / reissue --reader URL`) calls `StationCard` to find the
card and check it is blank *before* the server allocates a card number, then `write` once the record
exists. The station holds the issuer's key holder (card key B), derived from the site master key on
the hall machine; terminals never get it.

`ykt hall station` runs `run_station`: it waits for the card jobs the hall pages create (发卡/补卡任务),
prompts for a blank card, and carries each job through (`carry_job`: claim, write, done; a torn write
fails the job, whose card the server voids). It talks to the database only through the `desk` the
command line hands in (sync_server/services/card_jobs.py StationDesk): this module imports no server
code. The desk's methods: recover(), next_job(), is_pending(id), claim(id, uid) -> (identity, name),
written(id), torn(id, zh, en), and `Refused`, the bilingual error its refusals raise.

For the sim: reader a card image file stands for the card (`--card-file`): a blank one is created
when the file does not exist, and the written card is saved back to it.
"""
import os
import random
import time

from firmware.apps import card_io
from firmware.core import sam as sam_module
from reader_drivers.base import ReaderError, open_reader

POLL_TIMEOUT_MS = 10000


class StationError(Exception):
    def __init__(self, zh, en):
        Exception.__init__(self, "%s / %s" % (zh, en))
        self.zh = zh
        self.en = en


class NoCard(StationError):
    """Nothing on the reader (yet)."""


class StationCard:
    """The blank card lying on the station's reader (`reader`: one the station keeps open, else opened
    here and closed with the card)."""

    def __init__(self, reader_url=None, card_file=None, uid_hex=None, timeout_ms=POLL_TIMEOUT_MS, reader=None):
        if not reader_url and not card_file:
            raise StationError("请指定发卡读卡器（--reader）或卡片映像（--card-file）",
                               "give the issuing reader (--reader) or a card image (--card-file)")
        self.card_file = card_file
        self.card = None
        self.owns_reader = reader is None
        try:
            self.reader = reader if reader is not None else open_reader(reader_url or "sim:")
            if card_file:
                self.card = self._load_or_create(card_file, uid_hex)
                self.reader.field.place(self.card)
            self.target = self.reader.poll(timeout_ms)
        except ReaderError as error:
            raise StationError("读卡器不可用：%s" % error, "reader unavailable: %s" % error)
        if self.target is None:
            self.close()
            raise NoCard("发卡机上没有卡片", "no card on the issuing reader")
        try:
            card_io.require_blank(self.reader, self.target)
            checked_uid = self.target.uid
            self.target = self.reader.poll(timeout_ms)     # the blank check authenticated: select afresh
        except card_io.CardNotBlank:
            self.close()
            raise StationError("这张卡不是空白卡，不能发卡", "this card is not blank: it cannot be issued")
        except ReaderError as error:
            self.close()
            raise StationError("读卡失败，请放稳卡片重试：%s" % error, "card read failed, hold it still: %s" % error)
        if self.target is None or self.target.uid != checked_uid:
            # Only the card just checked blank may be written: not none, not one put there since.
            self.close()
            raise StationError("卡片已移开或被更换，请放回刚检查的空白卡", "the card checked blank left the issuing "
                               "reader or was swapped: put it back")

    @property
    def uid(self):
        return self.target.uid

    @staticmethod
    def _load_or_create(path, uid_hex):
        from reader_drivers.sim.classic_card import ClassicCard, random_nuid
        if os.path.exists(path):
            return ClassicCard.load(path)
        uid = bytes.fromhex(uid_hex) if uid_hex else random_nuid(random.SystemRandom())
        return ClassicCard(uid)

    def write(self, master_key, identity, name):
        """Write the identity and tap counter; StationError when the card left during the write."""
        issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
        try:
            card_io.issue_card(self.reader, issuer, self.target, identity, name)
        except ReaderError as error:
            raise StationError("写卡中断：%s" % error, "card write interrupted: %s" % error)
        finally:
            if self.card is not None:
                self.card.save(self.card_file)

    def close(self):
        if self.owns_reader:
            self.reader.close()


def carry_job(desk, job, card, master_key, say):
    """One card job with the blank `card`: claimed (the server allocates the card and books the fee
    once), written, done. Returns "done", "failed" (torn: the job waits for a retry, its card void)
    or "refused" (nothing written: the desk's reason said)."""
    try:
        identity, name = desk.claim(job["id"], card.uid)
    except desk.Refused as error:
        say("任务 #%d 未办理：%s" % (job["id"], error.zh), "job #%d not done: %s" % (job["id"], error.en))
        return "refused"
    say("正在写卡，请勿移开卡片：卡号 %d 第 %d 代" % (identity.card_number, identity.generation),
        "writing the card, keep it on the reader: number %d generation %d" % (identity.card_number,
                                                                            identity.generation))
    try:
        card.write(master_key, identity, name)
    except StationError as error:
        failed = desk.torn(job["id"], error.zh, error.en)
        say("任务 #%d 失败：%s" % (job["id"], failed["reason_zh"]), "job #%d failed: %s" % (job["id"], failed["reason_en"]))
        return "failed"
    try:
        desk.written(job["id"])
    except desk.Refused as error:
        say("任务 #%d：%s" % (job["id"], error.zh), "job #%d: %s" % (job["id"], error.en))
        return "failed"
    say("任务 #%d 完成：%s 的卡（卡号 %d 第 %d 代）已写好，请取走卡片" % (job["id"], name, identity.card_number,
                                                            identity.generation),
        "job #%d done: the card of %s (number %d generation %d) is written; take it off the reader"
        % (job["id"], name, identity.card_number, identity.generation))
    return "done"


def _prompt(say, job):
    what = ("补卡", "reissue") if job["kind"] == "reissue" else ("发卡", "first card")
    say("任务 #%d %s：%s（%s），请在发卡机上放一张空白卡" % (job["id"], what[0], job["name"], job["staff_number"] or "-"),
        "job #%d %s: %s (%s); put a blank card on the issuing reader" % (job["id"], what[1], job["name"],
                                                                         job["staff_number"] or "-"))


class _Station:
    """The loop's memory: the job announced, the last problem said, the cards the job's desk refused."""

    def __init__(self, reader, reader_url, card_file, say, idle_s):
        self.reader, self.reader_url, self.card_file, self.say, self.idle_s = reader, reader_url, card_file, say, idle_s
        self.job_id = None
        self.problem = None
        self.refused_uids = set()

    def announce(self, job):
        if job["id"] != self.job_id:
            self.job_id, self.problem, self.refused_uids = job["id"], None, set()
            _prompt(self.say, job)

    def tell(self, zh, en):
        if zh != self.problem:
            self.problem = zh
            self.say(zh, en)

    def blank_card(self, poll_ms):
        """The blank card on the reader, or None: no card (the poll waited), or a used or refused one
        (said once; the station waits a moment before it looks again)."""
        try:
            card = StationCard(self.reader_url, self.card_file, timeout_ms=poll_ms, reader=self.reader)
        except NoCard:
            return None
        except StationError as error:
            self.tell(error.zh, error.en)
            time.sleep(self.idle_s)
            return None
        if card.uid in self.refused_uids:
            card.close()
            self.tell("这张卡不能用于此任务，请换一张空白卡", "this card cannot be used for the job: put another blank card")
            time.sleep(self.idle_s)
            return None
        return card


def run_station(desk, master_key, reader_url, card_file=None, say=None, max_jobs=None, stopping=None,
                poll_ms=1000, idle_s=1.0):
    """Carry the hall's card jobs through, one blank card each, until `stopping()` (or `max_jobs` jobs
    done or failed). Jobs this station left half-written when it last stopped are voided first.
    StationError when the reader cannot be opened."""
    say = say or (lambda zh, en: print(zh, flush=True))
    stopping = stopping or (lambda: False)
    try:
        reader = open_reader(reader_url or "sim:")
    except ReaderError as error:
        raise StationError("读卡器不可用：%s" % error, "reader unavailable: %s" % error)
    try:
        for failed in desk.recover():
            say("任务 #%d：%s" % (failed["id"], failed["reason_zh"]), "job #%d: %s" % (failed["id"], failed["reason_en"]))
        station = _Station(reader, reader_url, card_file, say, idle_s)
        carried = 0
        say("发卡机就绪，等待发卡/补卡任务", "issuing station ready, waiting for card jobs")
        while not stopping() and (max_jobs is None or carried < max_jobs):
            job = desk.next_job()
            if job is None:
                time.sleep(idle_s)
                continue
            station.announce(job)
            card = station.blank_card(poll_ms)
            if card is None:
                continue
            try:
                outcome = carry_job(desk, job, card, master_key, say)
            finally:
                card.close()
            if outcome == "refused":
                if desk.is_pending(job["id"]):
                    station.refused_uids.add(card.uid)
                continue
            carried += 1
            station.job_id = None
    finally:
        reader.close()
    return carried
