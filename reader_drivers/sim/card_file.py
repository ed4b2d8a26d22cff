"""Card images in files that keep their state the way a card's EEPROM does.

A real card has written its memory the moment a WRITE or TRANSFER is acknowledged, whatever then
happens to the terminal. A simulated card lives in a process, so a terminal killed between a
command and a later save would leave the image behind the card it stands for (one tap counter
short: the next tap would repeat a counter and look like a clone). `write_through` saves the image
right after every command that changed card memory, through the field's operation hook.

Limits: a kill between the command and its save looks like the command never reached the card,
which a real card can also show (power lost before the EEPROM write). The save is atomic
(temp file + rename, `ClassicCard.save`) but not fsynced: it survives a killed process, not a
power cut of the test machine.
"""
from reader_drivers.sim.field import AFTER

# Commands that change card memory (MIFARE Classic datasheet, section 8.6 and 8.7): the value
# commands only fill the volatile transfer buffer; TRANSFER writes it to the block.
MEMORY_CHANGING_COMMANDS = frozenset(("write", "transfer"))


def write_through(field, card, path):
    """Save `card` to `path` after each memory-changing command it takes in `field`; returns a
    function that stops it. The card object is held here rather than looked up in the field, so a
    command whose answer was lost (card pulled in the same AFTER phase) is still saved: it took
    effect on the card. Saving `card` when another card took the command only repeats a save."""
    def hook(_field, _number, name, phase):
        if phase == AFTER and name in MEMORY_CHANGING_COMMANDS:
            card.save(path)
    return field.on_operation(hook)
