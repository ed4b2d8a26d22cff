"""Reader drivers behind one interface, picked by a URL-like name (like pyserial's serial_for_url).

    open_reader("sim:")                          in-process virtual RF field and card model (sim/)
    open_reader("pn532:/dev/ttyS0?baud=115200")  PN532 over a serial line, pyserial (pn532.py)
    open_reader("pcsc:ACR122")                   PC/SC reader through pcscd, pyscard (pcsc.py)
    open_reader("nfcpy:usb")                     a PN53x found and driven by nfcpy (nfcpy_driver.py)

The PN532 and nfcpy drivers share the MIFARE Classic command layer (pn53x_classic.py); each module's
docstring has a table of what it supports.
"""
from reader_drivers.base import (  # noqa: F401  (re-exported)
    AuthenticationError, CardGone, CardNak, Reader, ReaderError, ReaderTimeout, Target, UnsupportedOperation,
    open_reader, register_scheme,
)
