"""`raises`: pytest.raises for tests that must also run under MicroPython (no context-manager magic,
no pytest import)."""


def raises(exception_type, function, *args, **kwargs):
    """Call function(*args, **kwargs); return the exception_type it raised, fail if it did not."""
    try:
        function(*args, **kwargs)
    except exception_type as error:
        return error
    raise AssertionError("%s did not raise %s" % (getattr(function, "__name__", function),
                                                 exception_type.__name__))
