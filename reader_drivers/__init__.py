"""Reader drivers behind one interface, picked by a URL-like name (like pyserial's serial_for_url).

    open_reader("sim:")             in-process virtual RF field (simulators.field)
    open_reader("pn532:/dev/ttyS0") PN532 over a serial line        (its own issue)
    open_reader("pcsc:ACR122")      PC/SC reader through pcscd      (its own issue)
    open_reader("nfcpy:usb")        nfcpy-managed PN53x             (its own issue)
"""
from reader_drivers.base import (  # noqa: F401  (re-exported)
    AuthenticationError, CardGone, CardNak, Reader, ReaderError, ReaderTimeout, Target, UnsupportedOperation,
    open_reader, register_scheme,
)
