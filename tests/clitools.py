"""Running the command-line tools in-process from tests, and checking their one-line errors."""

import pytest


def cli(main, argv, capsys):
    """(exit status, stdout, stderr) of ``main(argv)`` (a tool's entry point, which exits)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_error(err, *needles):
    """``err`` is exactly one ``error: ...`` line, no traceback, holding every needle."""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
