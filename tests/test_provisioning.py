"""Keys from a provisioning file, read the same way by the POS and by `ykt card`: the current
"sam_keys" map, the older flat names, and a broken key named without showing it."""
import pytest

from firmware.apps import card_tool, pos_terminal, provisioning
from firmware.core import sam

KEYS = {sam.TERMINAL: "11" * 16, sam.CARD_KEY_A: "22" * 16, sam.CARD_KEY_B: "33" * 16, sam.CARD_MAC: "44" * 16}
FLAT = {"terminal_key": KEYS[sam.TERMINAL], "card_key_a": KEYS[sam.CARD_KEY_A], "card_mac": KEYS[sam.CARD_MAC]}


@pytest.mark.parametrize("document", [{"sam_keys": KEYS}, FLAT], ids=["sam_keys", "flat"])
def test_pos_and_card_tool_take_the_keys_they_need_from_either_form(document):
    pos_keys = pos_terminal.sam_from_provisioning(document)
    tool_keys = card_tool.card_keys_from_provisioning(document)
    assert pos_keys.has(sam.TERMINAL) and pos_keys.has(sam.CARD_MAC) and not pos_keys.has(sam.CARD_KEY_B)
    assert not tool_keys.has(sam.TERMINAL) and tool_keys.has(sam.CARD_KEY_A)   # the tool never needs it
    uid = bytes.fromhex("04a1b2c3")
    assert pos_keys.card_sector_key(uid, 1, "A") == tool_keys.card_sector_key(uid, 1, "A")


def test_a_key_that_is_not_hex_is_named_never_shown():
    secret = "zz" + KEYS[sam.CARD_MAC][2:]
    with pytest.raises(ValueError) as refused:
        provisioning.purpose_keys({"sam_keys": dict(KEYS, card_mac=secret)}, (sam.CARD_MAC,))
    assert sam.CARD_MAC in str(refused.value) and secret not in str(refused.value)
    with pytest.raises(ValueError):
        pos_terminal.sam_from_provisioning({"sam_keys": dict(KEYS, terminal=1234)})
    with pytest.raises(card_tool.ToolError):
        card_tool.card_keys_from_provisioning({"sam_keys": dict(KEYS, card_key_a=None)})
