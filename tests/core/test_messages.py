"""Every message has Chinese and English text and renders its fields (plain asserts)."""
from firmware.core import messages


def test_every_code_has_both_languages():
    for code in messages.TEXTS:
        zh, en = messages.TEXTS[code]
        assert zh and en and zh != en
        assert messages.text(code, "zh", amount_fen=100, balance_fen=0, name="x")
        assert messages.text(code, "en", amount_fen=100, balance_fen=0, name="x")


def test_required_prompts_read_as_users_know_them():
    assert messages.text(messages.TAP_CARD) == "请刷卡"
    assert messages.text(messages.INSUFFICIENT_BALANCE) == "余额不足"
    assert messages.text(messages.CARD_LOST) == "卡片已挂失"
    assert messages.text(messages.TAP_AGAIN) == "请重新刷卡"
    assert messages.text(messages.REPEAT_TAP) == "重复刷卡，请收银员确认"
    assert messages.text(messages.TAP_CARD, "en") == "Please tap your card"


def test_money_is_shown_in_yuan():
    line = messages.text(messages.ACCEPTED, amount_fen=1250, balance_fen=8805, name="张*明")
    assert line == "交易成功 消费12.50元 余额88.05元 张*明"
    assert messages.yuan(-5) == "-0.05"
    assert messages.yuan(100000) == "1000.00"


def test_unknown_language_falls_back_to_chinese():
    assert messages.text(messages.CARD_LOST, "fr") == "卡片已挂失"
