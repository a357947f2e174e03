import os
import sys
from pathlib import Path

import pytest

# Make tests/helpers.py importable as `helpers` from every test folder.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny model, built once per test session exactly as `coop-rl init-model tiny` builds it.

    Set COOP_RL_TINY_MODEL to a directory built earlier to skip the build when iterating locally.
    """
    prebuilt = os.environ.get("COOP_RL_TINY_MODEL")
    if prebuilt and (Path(prebuilt) / "coop_rl_tiny.json").exists():
        return Path(prebuilt)
    from coop_rl.tiny_model import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
