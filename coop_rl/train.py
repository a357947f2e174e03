"""From a recipe to a saved policy: ``load_recipe`` checks every setting of a training run, ``train`` runs it.

The one path of a training run, taken by ``coop-rl train`` (also under ``accelerate launch``) and ``coop-rl demo``:

1. ``load_recipe(argv)`` reads ``--config RECIPE.yaml [--key value ...]`` into an ``AAConfig`` and checks all that
   can be checked before any weights load: the recipe is a plain YAML mapping of known keys (``yaml.safe_load``: no
   Python tags, nothing executed; its ``env:`` block may not set what code a process loads), every value
   (``AAConfig.__post_init__``), no unknown option (with a did-you-mean hint), the model folder, the LoRA target
   modules (on the model's config, on the meta device) and the checkpoint to resume from.
2. ``train(config)`` builds the ``AATrainer``, trains (resuming when asked), saves the policy folder (weights,
   tokenizer, ``coop_rl_policy.json``) and returns its path.

Every error of the user's is raised as a ``UsageError`` with the one line the command line prints (exit status 2).
The ML stack is imported inside the functions: importing this module costs nothing (``coop-rl play`` imports no
torch). Logging is the caller's to configure.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from coop_rl.errors import UsageError
from coop_rl.policy_folder import POLICY_SETTINGS_FILE

if TYPE_CHECKING:
    from coop_rl.aa_config import AAConfig

PROG = "coop-rl train"

# Environment variables a recipe's `env:` block may not set: they decide what code a process (or its children:
# vLLM and accelerate workers) loads.
_LOADER_PREFIXES = ("LD_", "DYLD_", "PYTHON")
_LOADER_NAMES = frozenset({"PATH", "BASH_ENV", "ENV", "NODE_OPTIONS", "PERL5LIB", "PERL5OPT"})


def _train_keys() -> list[str]:
    import dataclasses

    from coop_rl.aa_config import AAConfig

    return [f.name for f in dataclasses.fields(AAConfig) if f.init]


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, _train_keys(), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{hint} (every setting: coop-rl train --help)"


def _recipe_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in a mapping (PyYAML keeps the last silently: a recipe with
    ``game: ipd`` and later ``game: bos`` trained on bos without a word)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: the base construct_mapping merges it
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice", key_node.start_mark)
                if isinstance(key, Hashable):
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return RecipeLoader


def check_recipe(path: str) -> dict[str, Any]:
    """The recipe at ``path``, a YAML mapping of known settings, each set once, read with a ``yaml.SafeLoader``
    (no Python tags, nothing executed); a UsageError in one line otherwise."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.load(handle, Loader=_recipe_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(f"recipe {path} is not a plain YAML mapping{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read recipe {path}: {error}") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of settings, not {type(recipe).__name__}")
    known = set(_train_keys()) | {"env"}  # TrlParser's `env:` block sets environment variables
    for key in recipe:
        if not isinstance(key, str) or key not in known:
            raise UsageError(f"unknown key {key!r} in recipe {path}{_did_you_mean(str(key))}")
    env = recipe.get("env", {})
    if not isinstance(env, dict):
        raise UsageError(f"env in recipe {path} must be a mapping of environment variables")
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, (str, int, float, bool)):
            raise UsageError(f"env in recipe {path}: {name!r} must be a name with a plain value")
        if name.upper().startswith(_LOADER_PREFIXES) or name.upper() in _LOADER_NAMES:  # what code processes load
            raise UsageError(f"env in recipe {path}: {name} may not be set from a recipe")
    return recipe


def check_lora_targets(model_dir: str, targets: str) -> None:
    """LoRA target modules must exist in the model: checked on the model's config (meta device, no weights)."""
    if targets.strip() == "all-linear":
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from coop_rl.policy_folder import resolve_model_dir

    base, _ = resolve_model_dir(model_dir)
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    if not wanted:
        raise UsageError(f"lora_target_modules={targets!r}: expected 'all-linear' or a comma-separated list")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    names = [name for name, _ in skeleton.named_modules() if name]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(
            f"lora_target_modules: {', '.join(missing)} not in the model; expected 'all-linear' or some of "
            f"{', '.join(linear)}"
        )


def _parser() -> Any:
    """TrlParser over AAConfig (recipe, then --key value overrides) whose errors are one-line UsageErrors."""
    from trl import TrlParser

    from coop_rl.aa_config import AAConfig

    parser = TrlParser(
        AAConfig, prog=PROG, allow_abbrev=False,  # --bet is no beta: a misspelt key is refused
        usage=f"{PROG} --config RECIPE.yaml [--key value ...]",
        description="Train with the settings of a YAML recipe (recipes/<game>/*.yaml; every key below may be set "
        "there), each overridden by --key value on the command line.",
    )  # fmt: skip

    def one_line_error(message: str) -> NoReturn:
        raise UsageError(message)

    parser.error = one_line_error  # type: ignore[method-assign]
    return parser


def print_recipe_help() -> None:
    """``coop-rl train --help``: every setting of AAConfig with its help text."""
    _parser().print_help()


def load_recipe(argv: Sequence[str]) -> AAConfig:
    """``--config RECIPE.yaml [--key value ...]`` as a checked ``AAConfig``; a ``UsageError`` at the first problem.

    The recipe file is checked before it is parsed, the values when the config is built, and the model folder,
    LoRA targets and checkpoint after: all before any weights load.
    """
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if argv.count("--config") > 1:
        raise UsageError("--config given more than once: one recipe per run (override its keys with --key value)")
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UsageError("--config needs a recipe file")
        if os.path.isdir(argv[index + 1]):
            raise UsageError(f"--config {argv[index + 1]} is a directory, not a recipe file")
        if not os.path.isfile(argv[index + 1]):
            raise UsageError(f"recipe not found: {argv[index + 1]}")
        check_recipe(argv[index + 1])
    try:
        config, unknown = _parser().parse_args_and_config(argv, return_remaining_strings=True)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    if unknown:
        option = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise UsageError(f"unknown option {option!r}{_did_you_mean(option.lstrip('-').replace('-', '_'))}")
    _check_model(config)
    from coop_rl.atomic_files import check_out_dir

    check_out_dir(config.output_dir, "output_dir")  # before any weights load, not when the first save fails
    return config


def check_no_earlier_run(config: AAConfig) -> None:
    """``coop-rl train``: a new run does not write over an earlier one in its output_dir (a resume continues it).
    Its checkpoints, trajectories and policy would be mixed with this run's (an earlier full model beside a new
    LoRA adapter plays as the old policy) or lost. The demo and the exploiter manage their own folders."""
    out = Path(config.output_dir)
    if config.resume_from_checkpoint or not out.is_dir():
        return
    names = (POLICY_SETTINGS_FILE, "model.safetensors", "adapter_model.safetensors", "trajectories")
    found = sorted(p.name for p in out.iterdir() if p.name in names or p.name.startswith("checkpoint-"))
    if found:
        raise UsageError(
            f"output_dir {out} holds an earlier run ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}): "
            "resume it with --resume_from_checkpoint, or choose another output_dir, or remove it"
        )


def _check_model(config: AAConfig) -> None:
    """The model folder exists, the LoRA targets are in it, the checkpoint to resume from exists."""
    from coop_rl.policy_folder import resolve_model_dir

    if not config.model_name_or_path:
        raise UsageError("no model: set model_name_or_path in the recipe or with --model_name_or_path")
    try:
        base, _ = resolve_model_dir(config.model_name_or_path)
    except ValueError as error:
        hint = ""  # the recipes' models are built locally: each recipe's header names its init-model command
        if not Path(config.model_name_or_path).expanduser().exists():
            hint = " (build it with coop-rl init-model: a recipe's header comment names the command for its model)"
        raise UsageError(f"{error}{hint}") from None
    _check_model_config(base)
    _check_opponents(config)
    if config.use_peft:
        check_lora_targets(config.model_name_or_path, config.lora_target_modules)
    if config.resume_from_checkpoint and not os.path.isdir(config.resume_from_checkpoint):
        raise UsageError(f"checkpoint not found: {config.resume_from_checkpoint}")
    if config.resume_from_checkpoint and not (Path(config.resume_from_checkpoint) / "trainer_state.json").is_file():
        # every finished save has it (written last by the Trainer): an empty folder or a cut save has not
        raise UsageError(
            f"{config.resume_from_checkpoint} is not a finished checkpoint (no trainer_state.json): "
            "name a checkpoint-N folder of a run"
        )
    if config.resume_from_checkpoint:
        _check_zero_partitions(Path(config.resume_from_checkpoint), int(os.environ.get("WORLD_SIZE") or 1))


def _check_model_config(base: Path) -> None:
    """The model folder's config.json reads (transformers' AutoConfig: no weights)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(base)
    except (OSError, ValueError, KeyError) as error:  # a config.json that is no JSON object: resolve_model_dir
        raise UsageError(f"cannot read the model config in {base}: {str(error).splitlines()[0]}") from None


def _check_opponents(config: AAConfig) -> None:
    """The frozen opponents and the in-training evaluation's opponents name players that can be made."""
    from coop_rl.players import check_player_spec

    for spec in config.played_specs():
        try:
            check_player_spec(spec, config.game)
        except ValueError as error:
            raise UsageError(f"opponent {spec!r}: {error}") from None


def _check_zero_partitions(checkpoint: Path, world_size: int) -> None:
    """A DeepSpeed ZeRO checkpoint holds one optimizer partition per process, and DeepSpeed cannot re-partition
    them for another number of processes: refuse that in one line (DDP and one-process checkpoints are whole and
    resume under any number of processes)."""
    tag = checkpoint / "latest"
    folder = checkpoint / tag.read_text().strip() if tag.is_file() else checkpoint
    partitions = {path.name.split("zero_pp_rank_")[1].split("_")[0] for path in folder.glob("*zero_pp_rank_*optim*")}
    if partitions and len(partitions) != world_size:
        raise UsageError(
            f"{checkpoint} holds DeepSpeed ZeRO optimizer states of {len(partitions)} processes, this run has "
            f"{world_size}: resume it with {len(partitions)} processes (accelerate launch --num_processes "
            f"{len(partitions)}), or convert it with DeepSpeed's ds_to_universal first"
        )


def train(config: AAConfig) -> Path:
    """Build the trainer, train, save the policy folder (``config.output_dir``, played as ``hf:DIR``); its path.

    A rank of a multi-process run (``accelerate launch``) ends inside, after saving (``finish_distributed_run``).
    """
    from coop_rl.output import bind_deepspeed_logger_to_stderr

    bind_deepspeed_logger_to_stderr()  # a library log, not this command's output: before transformers imports it
    from coop_rl.aa_trainer import AATrainer, CheckpointError, NumericalFaultError
    from coop_rl.distributed import finish_distributed_run

    try:
        trainer = AATrainer(model=config.model_name_or_path, args=config)
    except ValueError as error:
        raise UsageError(str(error).splitlines()[0]) from None
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    except (NumericalFaultError, CheckpointError) as error:
        raise UsageError(str(error)) from None
    finally:  # a crash or Ctrl-C too: shared vLLM servers unregister the learner's adapter (idempotent)
        trainer.opponents.close()
    trainer.save_model(config.output_dir)  # weights, tokenizer, then the policy settings: the mark of a finished run
    if trainer.accelerator.is_main_process:
        print(f"saved the trained policy to {config.output_dir} (play it as hf:{config.output_dir})")
    finish_distributed_run(trainer.accelerator)  # a rank of a multi-process run ends here (see its docstring)
    return Path(config.output_dir)


__all__ = ["check_lora_targets", "check_no_earlier_run", "check_recipe", "load_recipe", "print_recipe_help", "train"]
