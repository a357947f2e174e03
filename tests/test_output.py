"""coop_rl/output.py: with --json, stdout holds the JSON alone, whoever else writes to it (Python, fd 1, children)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from coop_rl.cli import main
from coop_rl.output import json_only_stdout, json_ready, print_json

# Every way a library writes to "stdout": print(), a write to descriptor 1, a child process that inherits it, and
# an exit handler (vLLM shuts its engines down at exit, logging as it goes).
NOISY = textwrap.dedent(
    """
    import atexit, os, subprocess, sys
    from coop_rl.output import json_only_stdout, json_ready, print_json

    atexit.register(lambda: print("exit-handler noise"))
    with json_only_stdout(until_exit=sys.argv[1] == "until-exit"):
        print("print noise")
        os.write(1, b"fd noise\\n")
        subprocess.run([sys.executable, "-c", "print('child noise')"], check=True)
        print_json({"answer": 42})
    print("after the block")
    """
)


def run_noisy(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NOISY, mode], capture_output=True, text=True, timeout=60)


def test_only_the_json_reaches_stdout_until_exit():
    proc = run_noisy("until-exit")  # how main() runs as the program
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"answer": 42}\n'
    for noise in ("print noise", "fd noise", "child noise", "after the block", "exit-handler noise"):
        assert noise in proc.stderr


def test_stdout_is_restored_after_the_block():
    proc = run_noisy("restore")  # how main() runs in-process (argv given)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"answer": 42}\nafter the block\nexit-handler noise\n'
    assert all(noise in proc.stderr for noise in ("print noise", "fd noise", "child noise"))


def test_in_process_under_fd_capture(capfd):
    with json_only_stdout():
        print("print noise")
        os.write(1, b"fd noise\n")
        print_json({"answer": 42})
    print("after")
    out, err = capfd.readouterr()
    assert out == '{"answer": 42}\nafter\n'
    assert "print noise" in err and "fd noise" in err


def test_main_sends_vllm_logs_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    assert main(["solve", "--game", "spgg", "--json"]) == 0
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # read by vLLM and its engine subprocess
    assert json.loads(capsys.readouterr().out)["unique"] is True
    monkeypatch.setenv("VLLM_LOGGING_STREAM", "ext://sys.stdout")  # a user's own choice is kept (--json or not)
    main(["games", "ipd", "--json"])
    (described,) = json.loads(capsys.readouterr().out)["games"]  # one object, as every --json
    assert described["game"] == "ipd"
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stdout"


def test_deepspeed_logs_go_to_stderr():
    # DeepSpeed binds its handler to the sys.stdout of its import and logs on import without a GPU ("Setting
    # accelerator to CPU"); `coop-rl train` printed that line among its own output before this.
    code = textwrap.dedent(
        """
        from coop_rl.output import bind_deepspeed_logger_to_stderr
        bind_deepspeed_logger_to_stderr()
        from deepspeed.utils import logger
        logger.warning("deepspeed noise")
        print("own output")
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU: the import's own warning is logged too
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "own output\n"
    assert "deepspeed noise" in proc.stderr and "Setting accelerator to CPU" in proc.stderr


def test_json_is_valid_json_with_null_for_what_json_cannot_hold(capsys):
    assert json_ready({"x": [math.nan, 1.0], "y": (math.inf,)}) == {"x": [None, 1.0], "y": [None]}
    print_json({"x": math.nan, "y": [-math.inf, 2.5]})
    printed = capsys.readouterr().out
    assert printed == '{"x": null, "y": [null, 2.5]}\n'
    json.loads(printed, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


def _coop_rl(args: str, redirect: str) -> subprocess.CompletedProcess:
    """``coop-rl <args>`` as a shell runs it, stdout redirected as ``redirect`` says."""
    command = f"{sys.executable} -m coop_rl {args} {redirect}"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", ["games ipd", "games ipd --json"])
def test_a_refused_write_is_one_line_and_exit_1(args):
    proc = _coop_rl(args, "> /dev/full")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "coop-rl: error: [Errno 28] No space left on device\n"


@pytest.mark.parametrize("args", ["games ipd", "games ipd --json"])
def test_a_closed_stdout_is_no_crash(args):
    proc = _coop_rl(args, ">&-")
    assert (proc.returncode, proc.stderr) == (0, "")
