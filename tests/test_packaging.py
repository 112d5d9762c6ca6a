"""Installing with pip into a fresh virtual environment, and README's commands as written.

The install runs with the interpreter running the tests, so under PyPy this
checks a PyPy installation.  pip may fetch the build tools (setuptools,
wheel) from the package index when the new environment lacks them.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import helpers

from backshift import __version__

# What a source distribution holds: copied, so that the test can see what pip's build leaves.
SOURCE_FILES = ("setup.py", "MANIFEST.in", "README", "LICENSE", "FORMAT.md", "backshift.1")


def _clean_env() -> dict:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _sh(args, cwd, input=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, input=input, env=_clean_env(), timeout=timeout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert result.returncode == 0, (args, result.stdout.decode(errors="replace")[-2000:],
                                    result.stderr.decode(errors="replace")[-2000:])
    return result


def _files(top) -> list:
    return sorted(os.path.relpath(os.path.join(where, name), str(top))
                  for where, dirs, files in os.walk(str(top)) for name in dirs + files)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with a copy of the checkout pip-installed into it,
    and the files the installation added to that copy."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(os.path.join(helpers.REPO, name), str(source / name))
    shutil.copytree(os.path.join(helpers.REPO, "backshift"), str(source / "backshift"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env_dir = base / "venv"
    _sh([sys.executable, "-m", "venv", str(env_dir)], cwd=str(base))
    before = _files(source)
    # From inside the source, as a person types it.
    _sh([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "."], cwd=str(source))
    return env_dir, sorted(set(_files(source)) - set(before))


@pytest.fixture(scope="module")
def venv(installed):
    return installed[0]


def test_pip_install_leaves_nothing_in_the_source(installed):
    assert installed[1] == []  # no build/, no backshift.egg-info/


def test_pip_install_gives_both_commands_and_the_man_page(venv, tmp_path):
    bindir = venv / "bin"
    result = _sh([str(bindir / "backshift"), "--version"], cwd=str(tmp_path))
    assert result.stdout.decode().strip() == "backshift " + __version__
    result = _sh([str(bindir / "python"), "-m", "backshift", "--version"], cwd=str(tmp_path))
    assert result.stdout.decode().strip() == "backshift " + __version__
    paths = [b"p%03d" % n for n in range(200)]
    result = _sh([str(bindir / "randomize"), "-0"], cwd=str(tmp_path),
                 input=b"\0".join(paths) + b"\0")
    shuffled = result.stdout.split(b"\0")
    assert shuffled[-1] == b"" and sorted(shuffled[:-1]) == paths and shuffled[:-1] != paths
    # The installed package is used, not the checkout; it needs nothing but Python >= 3.9.
    probe = ("import backshift, importlib.metadata as m; print(backshift.__file__); "
             "print(m.requires('backshift') or []); print(m.metadata('backshift')['Requires-Python'])")
    where, requires, python_requires = _sh([str(bindir / "python"), "-c", probe],
                                           cwd=str(tmp_path)).stdout.decode().splitlines()
    assert where.startswith(str(venv)) and requires == "[]" and python_requires == ">=3.9"
    with open(str(venv / "share" / "man" / "man1" / "backshift.1"), "rb") as installed, \
            open(os.path.join(helpers.REPO, "backshift.1"), "rb") as original:
        assert installed.read() == original.read()


def test_installed_command_backs_up_and_restores(venv, tmp_path):
    src = tmp_path / "src"
    helpers.make_hostile_tree(str(src))
    backshift = str(venv / "bin" / "backshift")
    savedir = str(tmp_path / "save")
    _sh([backshift, "--save-directory", savedir, "--init-savedir", "--backup", "--subset", "pkg",
         "--no-fsync"], cwd=str(tmp_path), input=helpers.find_print0("src", cwd=str(tmp_path)))
    listing = _sh([backshift, "--save-directory", savedir, "--list-backups"],
                  cwd=str(tmp_path)).stdout.decode()
    backup_id = listing.split()[0]
    tar_stream = _sh([backshift, "--save-directory", savedir, "--produce-tar", "--backup-id",
                      backup_id], cwd=str(tmp_path)).stdout
    helpers.extract(tar_stream, str(tmp_path / "out"))
    helpers.assert_same_tree(str(src), str(tmp_path / "out" / "src"))


def _readme() -> str:
    with open(os.path.join(helpers.REPO, "README"), encoding="utf-8") as handle:
        return handle.read()


def test_readme_quick_start_works_as_written(tmp_path):
    section = _readme().split("Quick start\n")[1].split("Run the test suite")[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert len(lines) <= 3 and all(len(line) < 130 for line in lines), lines
    # The same commands on a small tree like /usr/share/doc, run from another directory.
    doc = tmp_path / "data" / "doc"
    for package in ("tar", "xz-utils"):
        (doc / package).mkdir(parents=True)
        (doc / package / "copyright").write_bytes(b"licence of %s\n" % package.encode() * 50)
        (doc / package / "changelog.gz").write_bytes(os.urandom(5000))
    os.symlink("tar", str(doc / "gnu-tar"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = "backshift() { %s %s \"$@\"; }\n" % (
        shlex.quote(sys.executable), shlex.quote(os.path.join(helpers.REPO, "bin", "backshift")))
    for line in lines:
        script += line.replace("/tmp/bs-demo", str(tmp_path / "demo")) \
                      .replace("/tmp/bs-out", str(tmp_path / "out")) \
                      .replace("/usr/share/doc", str(doc)) + " || exit 1\n"
    result = subprocess.run(["bash", "-c", script], cwd=str(elsewhere), env=_clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode().splitlines()[-1] == "restored identically"


def test_readme_test_commands_are_what_ci_runs():
    with open(os.path.join(helpers.REPO, ".ci", "run"), encoding="utf-8") as handle:
        ci_lines = [line.strip() for line in handle]
    commands = re.findall(r"^    (\S+ -m pytest .*)$", _readme(), re.M)
    assert commands == ["python3 -m pytest -q tests", "pypy3 -m pytest -q tests"]
    assert [line for line in ci_lines if " -m pytest " in line] == commands
