"""Where the command line's output goes: with ``--json``, one JSON value alone on stdout; all else on stderr.

Why this module exists: libraries write to stdout on their own. vLLM configures its logger on ``sys.stdout`` by
default, and its EngineCore and worker processes inherit file descriptor 1 and write to it directly; tqdm bars,
transformers or deepspeed messages and plain ``print()`` calls inside libraries can land there too. A script that
runs ``coop-rl play ... --json`` and parses stdout with ``json.loads`` must get the JSON and nothing else.

Two layers, used by ``coop_rl.cli.main``:

- :func:`send_library_logs_to_stderr` sets environment variables, before any library is imported, that send
  vLLM's logging to stderr for every command (with or without ``--json``); child processes inherit them.
- :func:`bind_deepspeed_logger_to_stderr` imports DeepSpeed's logger with ``sys.stdout`` pointing at stderr, so
  that its handler (bound to the ``sys.stdout`` of the moment it is built) writes to stderr for the whole process.
- :func:`json_only_stdout` guards the run of a ``--json`` command: file descriptor 1 and ``sys.stdout`` both point
  at stderr, so nothing a library or a child process writes to "stdout" reaches it; :func:`print_json` writes the
  one JSON value to the original stdout, kept on a duplicate descriptor.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

# Settings the libraries read when imported (and their child processes, which inherit the environment).
# vLLM's default is ext://sys.stdout; its EngineCore subprocess configures its own logger from the same variable.
LIBRARY_LOG_SETTINGS = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}

_json_stream: TextIO | None = None  # the original stdout while a json_only_stdout block runs


def send_library_logs_to_stderr() -> None:
    """Send vLLM's logs to stderr (unless the user's environment chose a stream): call before importing vLLM.

    Within :func:`json_only_stdout` stdout stays clean whatever the user chose; this keeps the table output of
    commands without ``--json`` free of engine logs too.
    """
    for name, value in LIBRARY_LOG_SETTINGS.items():
        os.environ.setdefault(name, value)


def bind_deepspeed_logger_to_stderr() -> None:
    """Send DeepSpeed's logs to stderr: call before anything imports DeepSpeed (transformers does, in a training).

    DeepSpeed builds its logger's handler as ``StreamHandler(sys.stdout)`` when ``deepspeed.utils`` is first
    imported, and that import already logs ("Setting accelerator to CPU ...") on a machine without a GPU. Importing
    it here with ``sys.stdout`` pointing at stderr binds the handler to stderr for the rest of the process, and the
    import's own warning goes there too. No-op when DeepSpeed is absent or already imported.
    """
    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed.utils  # noqa: F401


def _writes_to_fd1(stream: TextIO) -> bool:
    """Whether ``stream`` writes to file descriptor 1 (the process's stdout, not a replacement such as pytest's)."""
    try:
        return stream.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both OSError and ValueError
        return False


@contextlib.contextmanager
def json_only_stdout(enabled: bool = True, until_exit: bool = False) -> Iterator[None]:
    """Within the block, stdout (``sys.stdout`` and file descriptor 1) goes to stderr; :func:`print_json` doesn't.

    Redirecting the descriptor, not only ``sys.stdout``, is what catches child processes (vLLM's EngineCore
    inherits descriptor 1 when it starts) and C-level writes. On leaving, ``sys.stdout`` is restored, and so is
    descriptor 1 unless ``until_exit``: a process about to end keeps it on stderr, so that exit handlers (vLLM shuts
    its engines down at exit) cannot write after the JSON. In-process callers (tests) leave ``until_exit`` False.
    """
    global _json_stream
    if not enabled or sys.stdout is None:  # None: started with stdout closed; print() then writes nowhere, as here
        yield
        return
    original = sys.stdout
    original.flush()
    try:
        saved_fd: int | None = os.dup(1)  # not inheritable: child processes never see the real stdout
    except OSError:  # no descriptor 1 (closed stdout): only sys.stdout can be redirected
        saved_fd = None
    if saved_fd is not None:
        try:
            os.dup2(2, 1)
        except OSError:  # no descriptor 2 either: leave descriptor 1 alone
            os.close(saved_fd)
            saved_fd = None
    if saved_fd is not None and _writes_to_fd1(original):
        channel: TextIO = open(saved_fd, "w", encoding=original.encoding, errors=original.errors, closefd=False)  # noqa: SIM115
    else:  # sys.stdout was already replaced (pytest's capsys, a caller's StringIO): the JSON goes there
        channel = original
    sys.stdout = sys.stderr
    _json_stream = channel
    try:
        yield
    finally:
        _json_stream = None
        sys.stdout = original
        if channel is not original:
            with contextlib.suppress(BrokenPipeError):  # a reader that went away; print_json already raised
                channel.close()
        if saved_fd is not None:
            if not until_exit:
                os.dup2(saved_fd, 1)
            os.close(saved_fd)


def json_ready(value: Any) -> Any:
    """Replace NaN/inf by null so that results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as one line of valid JSON to stdout (NaN and inf as null, as the files have them): the
    original stdout inside :func:`json_only_stdout`."""
    stream = _json_stream if _json_stream is not None else sys.stdout
    if stream is None:  # stdout was closed when the process started: nowhere to write, as print() does
        return
    stream.write(json.dumps(json_ready(value), allow_nan=False) + "\n")
    stream.flush()
