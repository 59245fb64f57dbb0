"""docs/audit.md, the auditor's guide, and these tests keep it true.

- Every code reference, `file.py:qualified.name`, names a file that exists and
  a name that file defines (imported, then looked up attribute by attribute; a
  function or class must be defined there under that name, not imported).
- Every test reference, `tests/test_x.py::test_name` or `...::test_name[id]`,
  names a test function the file defines (read with `ast`), and an `[id]` is a
  string the file spells, so a renamed table row is caught too.
- Every security-property row names at least one piece of code and one test.
- The last test feeds the checks references that do not exist, and expects
  each to be reported.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "audit.md"

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
CODE_REF = re.compile(rf"((?:{_NAME}/)*{_NAME}\.py):({_NAME}(?:\.{_NAME})*)")
TEST_REF = re.compile(rf"(tests/{_NAME}\.py)::({_NAME})(?:\[([^\]\s`]+)\])?")
SPAN = re.compile(r"`([^`\n]+)`")
PROPERTY_COLUMNS = ["Property", "Enforced by", "Tests that fail without it"]
PARTIES = ("client", "LiveKit Server", "proxy", "Operator", "Embedding code")


# --- Reading the guide ----------------------------------------------------------


def section(text: str, number: int) -> str:
    """The text under the heading "## <number>. ...", up to the next "## " heading."""
    match = re.search(rf"^## {number}\. .*$", text, re.MULTILINE)
    assert match, f"docs/audit.md has no section '## {number}.'"
    end = re.search(r"^## ", text[match.end() :], re.MULTILINE)
    return text[match.end() : match.end() + end.start() if end else len(text)]


def tables(text: str) -> list:
    """Each Markdown table in `text` as (header cells, [row cells, ...])."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            assert len(block) >= 2 and set("".join(block[1])) <= set("-: "), (
                f"not a table: {block[0]}"
            )
            found.append((block[0], block[2:]))
            block = []
    return found


def references(text: str) -> tuple:
    """(code references, test references, malformed spans) in the backticked spans of `text`."""
    code, tests, malformed = [], [], []
    for span in SPAN.findall(text):
        if ".py:" not in span:
            continue
        if match := TEST_REF.fullmatch(span):
            tests.append(match.groups())
        elif (match := CODE_REF.fullmatch(span)) and not span.startswith(
            "tests/"
        ):  # tests take "::"
            code.append(match.groups())
        else:
            malformed.append(span)
    return code, tests, malformed


# --- Checking references ----------------------------------------------------------


def code_problems(refs: list) -> list:
    """What is wrong with each (file, qualified name): a missing file, or a name not defined there."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    problems = []
    for path, qualified in sorted(set(refs)):
        if not (ROOT / path).is_file():
            problems.append(f"{path}:{qualified}: no such file")
            continue
        module_name = path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        obj = importlib.import_module(module_name)
        try:
            for part in qualified.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            problems.append(f"{path}:{qualified}: {part!r} not found")
            continue
        target = getattr(obj, "__func__", obj)  # a classmethod's function
        if inspect.isfunction(target) or inspect.isclass(target):
            where = (target.__module__, target.__qualname__)
            if where != (module_name, qualified):
                problems.append(f"{path}:{qualified}: is {where[0]}.{where[1]}, defined elsewhere")
    return problems


@functools.lru_cache(maxsize=None)
def _test_file(path: str) -> tuple:
    """(top-level test function names, every string constant) of a test file."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and type(node.value) is str
    }
    return {name for name in names if name.startswith("test")}, strings


def test_problems(refs: list) -> list:
    """What is wrong with each (file, test name, row id or None)."""
    problems = []
    for path, name, row in sorted(set(refs), key=str):
        shown = f"{path}::{name}" + (f"[{row}]" if row else "")
        if not (ROOT / path).is_file():
            problems.append(f"{shown}: no such file")
            continue
        names, strings = _test_file(path)
        if name not in names:
            problems.append(f"{shown}: no such test function")
        elif row is not None and row not in strings:
            problems.append(f"{shown}: the file spells no id {row!r}")
    return problems


test_problems.__test__ = False  # a checker, not a test


# --- Security-property rows ------------------------------------------------------------


def property_rows(text: str) -> list:
    """(property, enforced-by cell, tests cell) for each row of the security-property tables."""
    rows = []
    for header, body in tables(section(text, 3)):
        assert header == PROPERTY_COLUMNS, header
        rows += [tuple(cells) for cells in body]
    return rows


def row_problems(rows: list) -> list:
    problems = []
    for cells in rows:
        if len(cells) != 3:
            problems.append(f"{cells[0][:60]}: {len(cells)} cells, not 3")
            continue
        title, enforced_by, tests = cells
        if not references(enforced_by)[0]:
            problems.append(f"{title[:60]}: names no code")
        if not references(tests)[1]:
            problems.append(f"{title[:60]}: names no test")
    return problems


# --- The tests ---------------------------------------------------------------------------


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def test_every_reference_in_the_guide_is_well_formed():
    code, tests, malformed = references(guide())
    assert malformed == []
    assert len(code) >= 50 and len(tests) >= 100, (len(code), len(tests))


def test_every_code_reference_names_a_file_and_a_name_defined_there():
    assert code_problems(references(guide())[0]) == []


def test_every_test_reference_names_a_test_its_file_defines():
    assert test_problems(references(guide())[1]) == []


def test_every_security_property_row_names_code_and_tests():
    rows = property_rows(guide())
    assert len(rows) >= 30, len(rows)
    assert row_problems(rows) == []


def test_the_trust_boundaries_name_each_party():
    ((header, rows),) = tables(section(guide(), 2))
    assert header[0] == "Party"
    assert len(rows) == len(PARTIES)
    for cells, party in zip(rows, PARTIES):
        assert party in cells[0], (cells[0], party)


def test_the_checks_catch_what_is_missing():
    # Each of these must be reported: a check that passes everything proves nothing.
    text = """
| Property | Enforced by | Tests that fail without it |
|---|---|---|
| exists | `server.py:TokenPolicy.admit` | `tests/test_token_policy.py::test_rate_key` |
| no such method | `server.py:TokenPolicy.no_such_method` | `tests/test_token_policy.py::test_rate_key` |
| imported, not defined there | `server.py:AccessToken` | `tests/test_token_policy.py::test_rate_key` |
| no such module | `livekit_auth/no_such_module.py:verify` | `tests/test_token_policy.py::test_rate_key` |
| no such test | `server.py:read_body` | `tests/test_app.py::test_no_such_test` |
| no such test file | `server.py:read_body` | `tests/test_no_such_file.py::test_rate_key` |
| no such row | `server.py:read_body` | `tests/test_verification.py::test_both_reject[no-such-row]` |
| a helper, not a test | `server.py:read_body` | `tests/test_app.py::call` |
| no code | read the code | `tests/test_token_policy.py::test_rate_key` |
| no test | `server.py:read_body` | run it and see |
| malformed | `server.py: read_body` | `tests/test_token_policy.py:test_rate_key` |
"""
    code, tests, malformed = references(text)
    assert code_problems(code) == [
        "livekit_auth/no_such_module.py:verify: no such file",
        "server.py:AccessToken: is livekit_auth.tokens.AccessToken, defined elsewhere",
        "server.py:TokenPolicy.no_such_method: 'no_such_method' not found",
    ]
    assert test_problems(tests) == [
        "tests/test_app.py::call: no such test function",
        "tests/test_app.py::test_no_such_test: no such test function",
        "tests/test_no_such_file.py::test_rate_key: no such file",
        "tests/test_verification.py::test_both_reject[no-such-row]: the file spells no id 'no-such-row'",
    ]
    assert malformed == ["server.py: read_body", "tests/test_token_policy.py:test_rate_key"]
    ((_, rows),) = tables(text)
    assert row_problems([tuple(cells) for cells in rows]) == [
        "no code: names no code",
        "no test: names no test",
        "malformed: names no code",
        "malformed: names no test",
    ]
