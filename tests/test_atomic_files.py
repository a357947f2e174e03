"""coop_rl.atomic_files: a file is replaced whole or not at all, and no temporary file is left behind."""

import os
import stat
import threading

import pytest

from coop_rl.atomic_files import atomic_path, check_out_dir, remove_folder, write_text_atomic
from coop_rl.errors import UsageError


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    assert write_text_atomic(path, '{"a": 1}\n') == path
    write_text_atomic(path, '{"a": 2}\n')
    assert path.read_text() == '{"a": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_writer_that_fails_leaves_the_previous_file_as_it_was(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("the previous report\n")
    with pytest.raises(RuntimeError, match="killed mid-write"), atomic_path(path) as temporary:
        assert temporary.parent == tmp_path and temporary.name == f".report.md.{os.getpid()}.tmp"
        temporary.write_text("half a rep")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_any_writer_can_write_through_the_temporary_path(tmp_path):
    path = tmp_path / "plot.png"
    with atomic_path(path) as temporary:
        temporary.write_bytes(b"\x89PNG")
        assert not path.exists()  # nothing under the final name until the block ends
    assert path.read_bytes() == b"\x89PNG"


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path):
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("old")
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == ["through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_folder_is_removed_as_one_step_and_a_crashed_removal_is_finished_later(tmp_path, monkeypatch):
    run = tmp_path / "aa"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "coop_rl_policy.json").write_text("{}")

    def killed(path, *args, **kwargs):  # killed while deleting: the folder is already aside, whole
        raise KeyboardInterrupt

    monkeypatch.setattr("coop_rl.atomic_files.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_folder(run)
    (aside,) = tmp_path.iterdir()
    assert aside.name == f".aa.removing-{os.getpid()}" and (aside / "coop_rl_policy.json").exists()
    assert not run.exists()  # never a half-deleted aa whose policy file still reads as finished
    monkeypatch.undo()
    run.mkdir()
    remove_folder(run)  # the next removal there finishes the crashed one too
    assert list(tmp_path.iterdir()) == []


def test_a_link_to_a_folder_is_not_removed_through(tmp_path):
    target = tmp_path / "user-runs"
    (target / "aa").mkdir(parents=True)
    link = tmp_path / "aa"
    link.symlink_to(target)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        remove_folder(link)
    assert link.is_symlink() and (target / "aa").is_dir()


def test_check_out_dir_accepts_a_folder_to_be_made_and_names_the_flag_when_it_refuses(tmp_path):
    assert check_out_dir(None) is None
    later = tmp_path / "not" / "yet" / "made"
    assert check_out_dir(str(later)) == str(later)  # created when the results are written
    assert not later.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=f"^cannot use output_dir '{blocker}/x': {blocker} is not a directory$"):
        check_out_dir(str(blocker / "x"), "output_dir")
    (tmp_path / "out" / "report.md").mkdir(parents=True)
    with pytest.raises(UsageError, match="report.md is a directory$"):
        check_out_dir(str(tmp_path / "out"), files=("results.json", "report.md"))
    with pytest.raises(UsageError, match="^--out needs a folder path$"):
        check_out_dir("  ")


def test_check_out_dir_refuses_a_link_to_nothing_before_any_match(tmp_path, capsys):
    # exists() is false through a dangling link, so it passed, and eval failed (FileExistsError) after every match
    from coop_rl.cli import main

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    for path in (link, link / "sub"):
        with pytest.raises(UsageError, match=f"^cannot use --out '{path}': {link} is a link to nothing$"):
            check_out_dir(str(path))
    argv = ["eval", "--policy", "tft", "--game", "ipd", "--opponents", "alld", "--matches", "1", "--out", str(link)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"coop-rl: error: cannot use --out '{link}': {link} is a link to nothing"]
