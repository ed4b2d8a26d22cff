"""Sans-IO terminal core: card layouts, decisions, codecs and state machines.

Everything under this package must import and run on MicroPython as well as CPython: only
`hashlib`, `struct`, `binascii`, `micropython` (guarded) and plain Python. No I/O, no clock, no
threads: callers pass times and bytes in and get decisions and actions out.
"""
