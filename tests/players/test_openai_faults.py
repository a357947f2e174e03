"""API opponents, the cases tests/players/test_openai_player.py leaves open: a server that closes the connection
(before answering, or mid-body), the command line's one-line report of an API failure, and a canary API key that
never reaches a transcript, an evaluation report, a trajectory file, a checkpoint, a log or the terminal.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest
from test_openai_player import FakeServer, Reply

from coop_rl.players.openai_player import OpenAIPlayer, OpenAIPlayerError
from coop_rl.players.scripted import ScriptedPlayer
from coop_rl.runner import run_matches

CANARY = "sk-canary-DO-NOT-LEAK-4b1d9e27c0"
MODEL = "fake-model"


class ClosingServer:
    """A raw HTTP/1.1 server on loopback: ``behaviour(n)`` says what to do with request n.

    "close": read the request and close the connection without a response; "truncate": send the headers of a
    1000-byte JSON body, 20 bytes of it, then close; "ok": a complete chat completion answering "C".
    """

    def __init__(self, behaviour) -> None:
        self.behaviour = behaviour
        self.count = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            while len(body) < length:
                body += conn.recv(65536)
            with self.lock:
                n = self.count
                self.count += 1
            kind = self.behaviour(n)
            if kind == "close":
                return
            payload = json.dumps(
                {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "C"}, "finish_reason": "stop"}]}
            ).encode()  # fmt: skip
            if kind == "truncate":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n")
                conn.sendall(payload[:20])
                return
            header = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            conn.sendall(header.encode() + b"connection: close\r\n\r\n" + payload)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture
def closing_server():
    servers = []

    def start(behaviour):
        servers.append(ClosingServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _ipd_requests():
    from coop_rl.envs import make_game
    from coop_rl.players.base import TurnRequest

    game = make_game("ipd", rounds=2)
    game.reset(0)
    return [TurnRequest(0, game, game.pending_turns()[0])]


@pytest.mark.parametrize("kind", ["close", "truncate"])
def test_connection_closed_by_the_server_is_retried_then_fails_clearly(kind, closing_server, caplog):
    server = closing_server(lambda n: kind)
    player = OpenAIPlayer(MODEL, server.base_url, max_retries=2, backoff_s=0.01, timeout_s=5)
    try:
        with caplog.at_level(logging.WARNING, logger="coop_rl.players.openai"), pytest.raises(OpenAIPlayerError) as e:
            player.act(_ipd_requests())
    finally:
        player.close()
    message = str(e.value)
    assert server.count == 3 and "3 attempt" in message and server.base_url in message and "\n" not in message
    assert "connection error" in message or "malformed" in message
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 2  # each retry logged


@pytest.mark.parametrize("kind", ["close", "truncate"])
def test_connection_closed_once_then_the_answer_counts(kind, closing_server):
    server = closing_server(lambda n: kind if n == 0 else "ok")
    player = OpenAIPlayer(MODEL, server.base_url, max_retries=2, backoff_s=0.01, timeout_s=5)
    try:
        results = run_matches("ipd", {"rounds": 2}, [player, ScriptedPlayer("tft", "ipd")], matches=1)
    finally:
        player.close()
    assert results[0].invalid_counts[0] == 0 and results[0].action_counts[0] == 2
    assert server.count == 3  # one closed connection + two answered turns


def test_cli_reports_a_dead_api_opponent_in_one_line(monkeypatch, capsys):
    from coop_rl.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    capsys.readouterr()
    code = main(["play", "--game", "ipd", "--players", f"openai:{MODEL}@{dead},tft", "--matches", "1", "--rounds", "1"])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("coop-rl: error: "), err
    assert dead in lines[0] and "attempt" in lines[0] and "Traceback" not in err
    assert CANARY not in out + err


def _assert_no_canary(tmp_path, capsys, caplog):
    """The key appears in no file under tmp_path, nowhere on the terminal and in no log record."""
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert CANARY.encode() not in path.read_bytes(), path
    out, err = capsys.readouterr()
    assert CANARY not in out + err + caplog.text


def test_canary_key_never_written_by_play_or_eval(tmp_path, monkeypatch, capsys, caplog):
    """play --transcripts and eval --out against an API opponent: the key is sent, never kept."""
    from coop_rl.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    server = FakeServer(lambda n, body: Reply(text="C" if n % 2 else "I choose <action>D</action>"))
    spec = f"openai:{MODEL}@{server.base_url}"
    caplog.set_level(logging.DEBUG)
    try:
        assert main(["play", "--game", "ipd", "--players", f"{spec},tft", "--matches", "2", "--rounds", "3",
                     "--transcripts", str(tmp_path / "transcripts.jsonl"), "--json"]) == 0  # fmt: skip
        assert main(["eval", "--policy", "tft", "--game", "ipd", "--opponents", spec, "--matches", "2",
                     "--rounds", "3", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    finally:
        server.close()
    assert any(auth == f"Bearer {CANARY}" for auth in server.auth)  # the key was really used
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "transcripts.jsonl" in names and "eval/results.json" in names
    _assert_no_canary(tmp_path, capsys, caplog)


@pytest.mark.slow
def test_canary_key_never_written_by_training(tmp_path, tiny_model_dir, monkeypatch, capsys, caplog):
    """A training run against an API opponent: the key is sent, never kept (trajectories, checkpoint, logs)."""
    from coop_rl.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    server = FakeServer(lambda n, body: Reply(text="C" if n % 2 else "I choose <action>D</action>"))
    spec = f"openai:{MODEL}@{server.base_url}"
    caplog.set_level(logging.DEBUG)
    try:
        assert main(["train", "--config", "recipes/ipd/aa_tiny.yaml", "--model_name_or_path", str(tiny_model_dir),
                     "--output_dir", str(tmp_path / "train"), "--opponent", "frozen", "--opponents", spec,
                     "--matches_per_iteration", "8", "--max_steps", "1", "--save_steps", "1",
                     "--game_params", '{"rounds": 2}']) == 0  # fmt: skip
    finally:
        server.close()
    assert any(auth == f"Bearer {CANARY}" for auth in server.auth)  # the key was really used
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "train/trajectories/iteration-000001.jsonl" in names and "train/checkpoint-1/trainer_state.json" in names
    _assert_no_canary(tmp_path, capsys, caplog)
