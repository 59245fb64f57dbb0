"""pyproject.toml: the pins, the oldest supported Python, what a wheel ships.

- The `test` extra and requirements-test.txt pin the same packages, so
  `pip install .[test]` and the README's command test the same thing.
- Python 3.10 (`requires-python = ">=3.10"`): every module shipped parses as
  3.10 syntax, and, where a Python 3.10 interpreter is installed, imports and
  works on it with the standard library alone.
- What a wheel holds: server.py and livekit_auth/, never tests/ or bench/.
  Checked offline with the venv's setuptools (see the test's docstring).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # seconds, for each subprocess; each takes well under one
SHIPPED = sorted([ROOT / "server.py", *(ROOT / "livekit_auth").glob("*.py")])


def _pyproject() -> dict:
    tomllib = pytest.importorskip(
        "tomllib", reason="tomllib is in the standard library from Python 3.11"
    )
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def _normalized(requirement: str) -> str:
    # "Livekit_API == 1.2.2" and "livekit-api==1.2.2" are the same pin (PEP 503 names).
    name, rest = re.match(r"\s*([A-Za-z0-9._-]+)(.*)", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest.replace(" ", "")


def _requirements_file() -> list:
    lines = (ROOT / "requirements-test.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


# --------------------------------------------------------------------------
# pyproject.toml


def test_test_extra_pins_exactly_what_requirements_test_txt_pins():
    extra = _pyproject()["project"]["optional-dependencies"]["test"]
    from_file = _requirements_file()
    assert sorted(map(_normalized, extra)) == sorted(map(_normalized, from_file))
    # Every line pinned to one version, in both: the golden vectors and the
    # hosts under test are those exact releases.
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][0-9a-z.]*", _normalized(r)) for r in from_file), (
        from_file
    )
    names = [_normalized(r).split("==")[0] for r in from_file]
    assert {"livekit-api", "pytest", "gunicorn", "waitress", "coverage"} <= set(names)
    assert len(names) == len(set(names))


def test_project_has_no_runtime_dependencies_and_ships_the_server_and_library():
    config = _pyproject()
    project = config["project"]
    assert project.get("dependencies", []) == []
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"livekit-token-server": "server:main"}
    assert config["tool"]["setuptools"]["py-modules"] == ["server"]
    assert config["tool"]["setuptools"]["packages"] == ["livekit_auth"]
    assert config["build-system"]["build-backend"] == "setuptools.build_meta"


def test_pytest_is_configured_in_pyproject_only():
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]
    assert options["addopts"] == "-p no:cacheprovider"
    # pytest reads pytest.ini (and tox.ini, setup.cfg) before pyproject.toml:
    # a stray one would silently replace this configuration.
    assert not (ROOT / "pytest.ini").exists()
    assert not (ROOT / "tox.ini").exists()
    assert not (ROOT / "setup.cfg").exists()


def test_coverage_is_configured_in_pyproject_only():
    # The README's coverage command: branch coverage of the runtime, child processes included.
    run = _pyproject()["tool"]["coverage"]["run"]
    assert run["branch"] is True
    assert run["source"] == ["server", "livekit_auth"]
    assert run["patch"] == ["subprocess", "fork"]
    # coverage reads .coveragerc before pyproject.toml: a stray one would replace this.
    assert not (ROOT / ".coveragerc").exists()


# --------------------------------------------------------------------------
# The oldest supported Python


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_module_parses_as_python_3_10(path):
    # Catches syntax newer than 3.10 (except*, `type X = ...`, PEP 695 generics,
    # PEP 701 f-strings) whatever Python runs the tests. Library calls newer
    # than 3.10 are caught only by running it: the next test.
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def _python_3_10() -> str | None:
    """A Python 3.10 interpreter that runs: on PATH, or under pyenv (whose shim
    on PATH may exist without 3.10 being selected)."""
    candidates = [shutil.which("python3.10")]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", "3.10.*", "bin", "python3.10"))
    )
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run(
                [candidate, "-E", "-S", "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
        except OSError:
            continue
        if result.returncode == 0 and result.stdout == "(3, 10)\n":
            return candidate
    return None


# Run under Python 3.10 with -E -S: no site-packages and no PYTHONPATH, so only
# the standard library and the project root (the script's directory: "") are
# importable. Tokens, verification, webhooks and the WSGI app, end to end.
ON_PYTHON_3_10 = r"""
import base64, hashlib, io, json, sys, wsgiref.util
assert sys.version_info[:2] == (3, 10), sys.version
import server, livekit_auth as la

key, secret = "testkey", "a-test-secret-of-at-least-32-chars!!"
token = (la.AccessToken(key, secret).with_identity("alice")
         .with_grants(la.VideoGrants(room_join=True, room="room-1")).to_jwt())
verifier = la.TokenVerifier(key, secret)
claims = verifier.verify(token)
assert (claims.identity, claims.video.room) == ("alice", "room-1"), claims

body = b'{"event":"room_started","id":"EV_1","room":{"name":"room-1"}}'
digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
signed = la.AccessToken(key, secret).with_sha256(digest).to_jwt()
event = la.WebhookReceiver(verifier).receive(body, signed)
assert (event.event, event.room.name, event.to_dict()["id"]) == ("room_started", "room-1", "EV_1"), event

app = server.make_app(server.load_settings({"LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}))
request = b'{"roomName": "room-1", "participantName": "bob"}'
environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/token", "CONTENT_TYPE": "application/json",
           "CONTENT_LENGTH": str(len(request)), "wsgi.input": io.BytesIO(request)}
wsgiref.util.setup_testing_defaults(environ)
answer = []
out = b"".join(app(environ, lambda status, headers, exc_info=None: answer.append(status)))
assert answer == ["200 OK"], (answer, out)
assert verifier.verify(json.loads(out)["token"]).identity == "bob"
outside = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
assert outside <= {"server", "livekit_auth", "__main__"}, outside
print("ok")
"""


def test_server_and_library_work_on_python_3_10_with_the_standard_library_alone():
    python = _python_3_10()
    if python is None:
        pytest.skip("no working python3.10 on PATH or under pyenv: the 3.10 run is not checked")
    result = subprocess.run(
        [python, "-E", "-S", "-c", ON_PYTHON_3_10],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


# --------------------------------------------------------------------------
# What a wheel holds


def _copy_project(destination: Path) -> None:
    # The build writes build/ and *.egg-info next to pyproject.toml: a copy
    # keeps them out of the work tree. tests/ and bench/ come along so that
    # leaving them out of the wheel is the configuration's doing.
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "build", "*.egg-info", "dist"
    )
    shutil.copytree(ROOT, destination, ignore=ignore)


def test_build_takes_server_py_and_livekit_auth_only(tmp_path):
    """What setuptools puts in the wheel, offline.

    `pip wheel .` needs the network for its isolated build environment, and
    `--no-build-isolation` needs `bdist_wheel`, which the setuptools that
    `python3 -m venv` bundles (65.x) lacks without the `wheel` package. So this
    runs the same setuptools steps that fill a wheel, from pyproject.toml:
    `egg_info` (metadata, entry points, requirements) and `build_py` (the files
    copied into the wheel's root), and checks what they produce.
    """
    pytest.importorskip(
        "setuptools", reason="the venv's Python has no setuptools (Python 3.12+ venvs)"
    )
    source, out = tmp_path / "src", tmp_path / "out"
    _copy_project(source)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "--quiet",
            "egg_info",
            "--egg-base",
            str(tmp_path),
            "build_py",
            "--build-lib",
            str(out),
        ],
        cwd=source,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert built == sorted(str(p.relative_to(ROOT)) for p in SHIPPED)
    assert not any(name.startswith(("tests", "bench")) for name in built)

    info = tmp_path / "livekit_token_server.egg-info"
    # No requirement outside the [test] extra: installing pulls in nothing.
    requires = (info / "requires.txt").read_text(encoding="utf-8")
    assert requires.lstrip().startswith("[test]\n"), requires
    entry_points = (info / "entry_points.txt").read_text(encoding="utf-8").split()
    assert entry_points == ["[console_scripts]", "livekit-token-server", "=", "server:main"]
    assert (info / "top_level.txt").read_text(encoding="utf-8").split() == [
        "livekit_auth",
        "server",
    ]


def _older_pythons() -> list:
    """Python 3.8 and 3.9 interpreters under pyenv, where there are any."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.[89].*", "bin", "python3")))


@pytest.mark.skipif(not _older_pythons(), reason="no Python 3.8 or 3.9 here")
@pytest.mark.parametrize("python", _older_pythons() or ["none"])
def test_an_older_python_is_told_in_one_line_which_it_needs_and_exits_2(python, tmp_path):
    result = subprocess.run(
        [python, "-E", "-S", str(ROOT / "server.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        "server.py needs Python 3.10 or newer\n",
    )
