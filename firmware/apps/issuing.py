"""The service hall's issuing station (发卡机): put a blank card on the reader, write the card record.

The hall's command line (`ykt hall card-issue / reissue --reader URL`) calls `StationCard` to find the
card and check it is blank *before* the server allocates a card number, then `write` once the record
exists. The station holds the issuer's key holder (card key B), derived from the site master key on
the hall machine; terminals never get it.

For the sim: reader a card image file stands for the card (`--card-file`): a blank one is created
when the file does not exist, and the written card is saved back to it.
"""
import os
import random

from firmware.apps import card_io
from firmware.core import sam as sam_module
from reader_drivers.base import ReaderError, open_reader

POLL_TIMEOUT_MS = 10000


class StationError(Exception):
    def __init__(self, zh, en):
        Exception.__init__(self, "%s / %s" % (zh, en))
        self.zh = zh
        self.en = en


class StationCard:
    """The blank card lying on the station's reader."""

    def __init__(self, reader_url=None, card_file=None, uid_hex=None, timeout_ms=POLL_TIMEOUT_MS):
        if not reader_url and not card_file:
            raise StationError("请指定发卡读卡器（--reader）或卡片映像（--card-file）",
                               "give the issuing reader (--reader) or a card image (--card-file)")
        self.card_file = card_file
        self.card = None
        try:
            self.reader = open_reader(reader_url or "sim:")
            if card_file:
                self.card = self._load_or_create(card_file, uid_hex)
                self.reader.field.place(self.card)
            self.target = self.reader.poll(timeout_ms)
        except ReaderError as error:
            raise StationError("读卡器不可用：%s" % error, "reader unavailable: %s" % error)
        if self.target is None:
            self.close()
            raise StationError("发卡机上没有卡片", "no card on the issuing reader")
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
        self.reader.close()
