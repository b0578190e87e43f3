"""What the command-line entry points share: ``--key=value`` config flags, and how a run that
stops early ends.

A *user error* (a setting, file or flag to fix) ends the command with its message, once, on stderr
and exit status 1; its traceback goes to RecBole's log file when a logger is set up. A user error
is a :class:`UserError`, or a ``ValueError``, ``KeyError`` or ``OSError`` raised by a ``raise``
statement of this package or of RecBole's configuration and dataset loading (``recbole.config``,
``recbole.data.dataset``, ``recbole.data.utils``): a message written for the user. Anything else
is a bug and keeps its traceback, including a ``ValueError`` from inside torch or pandas, a missing
dict key or a failed ``int()`` in our own code. With ``RECBOLE_LLMSREC_DEBUG=1`` every error keeps
its traceback.

Ctrl-C ends the command with one line saying what the run has saved, and exit status 130.
"""

import dis
import logging
import os
import sys
import traceback
from contextlib import contextmanager

import yaml

DEBUG_ENV = "RECBOLE_LLMSREC_DEBUG"
USER_ERROR_TYPES = (ValueError, KeyError, OSError)
# code whose raise statements speak to the user; "__main__" is the script run (run_hyper.py, ...)
USER_ERROR_MODULES = ("recbole_llmsrec", "recbole.config", "recbole.data.dataset", "recbole.data.utils", "__main__")


class UserError(ValueError):
    """A mistake in the settings, data files or command line; the command line shows its message alone."""


def config_flags(args):
    """``--key=value`` flags as a config dict (values read as YAML)."""
    flags = {}
    for flag in args:
        if not flag.startswith("--") or "=" not in flag:
            raise UserError(f"unrecognised argument {flag!r}: config keys are given as --key=value")
        key, value = flag[2:].split("=", 1)
        try:
            flags[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or " ".join(str(err).split())
            raise UserError(f"--{key}={value} is not a YAML value ({problem})") from None
    return flags


def debug():
    """Whether tracebacks are shown for every error (``RECBOLE_LLMSREC_DEBUG`` set and not 0)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def is_user_error(err):
    """Whether ``err`` is a user error (see the module docstring)."""
    if isinstance(err, UserError):
        return True
    if not isinstance(err, USER_ERROR_TYPES) or err.__traceback__ is None:
        return False
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__") or ""
    if not any(module == name or module.startswith(f"{name}.") for name in USER_ERROR_MODULES):
        return False
    # a raise statement, not an operation failing there (a missing key, int("x"), a call into C)
    for instruction in dis.get_instructions(tb.tb_frame.f_code):
        if instruction.offset == tb.tb_lasti:
            return instruction.opname == "RAISE_VARARGS"
    return False


def error_message(err):
    """The text of ``err`` as written (a ``KeyError`` shows its message without quotes)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err) or type(err).__name__


def _log_traceback(err):
    """``err``'s traceback in the log files of the root logger (RecBole's ``log/``), not on the terminal."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
    record = logging.LogRecord("recbole_llmsrec", logging.ERROR, __file__, 0, text, None, None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


@contextmanager
def user_errors(interrupted=None):
    """Run a command's body: a user error ends it with its message and status 1, Ctrl-C with one
    line and status 130; other errors pass through with their traceback (all do when debugging).

    ``interrupted`` returns what the line after "interrupted: " says (what the run has saved); a
    ``KeyboardInterrupt`` raised with a message says that instead.
    """
    try:
        yield
    except KeyboardInterrupt as err:
        if debug():
            raise
        what = str(err) if err.args else (interrupted() if interrupted else "")
        print(f"interrupted: {what}" if what else "interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as err:
        if debug() or not is_user_error(err):
            raise
        _log_traceback(err)
        print(f"error: {error_message(err)}", file=sys.stderr, flush=True)
        sys.exit(1)
