"""Unit tests of firmware/core that run twice: under CPython (pytest collects them as usual) and
under the real MicroPython (tests/test_micropython.py runs tools/mp_test_runner.mjs on each module).

So every module here keeps to what both interpreters have: plain `def test_...()` functions with
`assert`, imports of `firmware.core.*` and MicroPython-safe modules only, helpers from this package
by relative import (`from .expect import raises`). No fixtures, no pytest.raises, no hypothesis:
property tests of the same code live in tests/ outside this folder.
"""
