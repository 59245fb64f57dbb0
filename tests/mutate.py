"""Mutation testing: change the checked code one small way at a time, and run its tests on each change.

Test-only and not collected by pytest (no test_ prefix). Run from the project root:

    .venv/bin/python tests/mutate.py                 # every target, 2 workers
    .venv/bin/python tests/mutate.py read_head       # one target
    .venv/bin/python tests/mutate.py --list          # the mutants, not run
    .venv/bin/python tests/mutate.py --only 12 40    # some mutants, by number in --list

Each target is a file, or some functions of one, and the test files that should catch a change to
it. The mutations (applied with `ast`, one per mutant): a comparison swapped (== and !=, < and <=
or >=, is and is not, in and not in); `and` and `or` swapped; a `not` removed; + and -, * and /
swapped; an int constant n made n + 1, a bool negated, a str or bytes constant wrapped in "XX";
each if, while, conditional expression and comprehension condition made True and made False; a
raise removed; a returned value made None; a keyword argument left out of a call. Docstrings and
annotations are left alone.

Each mutant is written into a copy of the project (one per worker, in a temporary directory: the
working tree is never touched), and the target's test files run there with `pytest -x` in a
subprocess with a timeout. A mutant is killed when the tests fail, error or time out; it survives
when they pass. Before the mutants, the unmutated code is run the same way (after the same
ast round trip) and must pass, or nothing is run. EQUIVALENT lists the survivors that cannot change
behaviour, with the reason; any other survivor makes the exit status 1. SANITY names mutants that
break every token, which must be killed, or the run proves nothing.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Target:
    path: str  # relative to ROOT
    functions: Optional[tuple]  # qualified names, or None for the whole file
    tests: tuple  # test files, run in this order
    timeout: float  # seconds for one run of the tests


TARGETS = {
    "verification": Target(
        "livekit_auth/verification.py",
        None,
        ("tests/test_verification.py", "tests/test_tokens.py", "tests/test_webhook.py"),
        60,
    ),
    "webhook": Target(
        "livekit_auth/webhook.py",
        None,
        ("tests/test_webhook.py", "tests/test_parity.py", "tests/test_verification.py"),
        60,
    ),
    "read_head": Target(
        "server.py",
        (
            "_StrictHandler.read_head",
            "_StrictHandler.read_head_lines",
            "_StrictHandler.check_framing",
            "_StrictHandler.make_environ",
        ),
        ("tests/test_adversarial.py", "tests/test_runner.py", "tests/test_logging_and_main.py"),
        180,
    ),
    "read_body": Target(
        "server.py", ("read_body",), ("tests/test_app.py", "tests/test_adversarial.py"), 180
    ),
}

# Survivors that cannot change behaviour: (file, scope, mutation, occurrence) -> why; see Mutant.key.
EQUIVALENT = {
    (
        "livekit_auth/webhook.py",
        "<module>",
        "if condition: TYPE_CHECKING -> False",
        0,
    ): "guards an import made for annotations only, which `from __future__ import annotations` never evaluates",
    (
        "livekit_auth/webhook.py",
        "WebhookReceiver.read_event",
        "constant: '' -> 'XXXX'",
        0,
    ): 'the default of event.get("id", ""), which is only checked to be a str; "XXXX" is one too',
    (
        "server.py",
        "_StrictHandler.read_head",
        "constant: 0 -> 1",
        1,
    ): "where _CONTROL.search starts in a header line; byte 0 is a token character, checked by _FIELD_NAME.match "
    "on the line above",
    (
        "server.py",
        "_StrictHandler.check_framing",
        "constant: '' -> 'XXXX'",
        0,
    ): 'the Connection options read when the header is absent; "xxxx" is neither "close" nor "keep-alive"',
}

# Mutants that break every token, or every request: each must be killed, or the harness does not exercise mutants.
_MAC = (
    "comprehension if: hmac.compare_digest(hmac.digest(secret, signing_input, 'sha256'), signature)"
)
SANITY = [
    (
        "livekit_auth/verification.py",
        f"{_MAC} -> True",
        "the MAC comparison always true: any signature passes",
    ),
    (
        "livekit_auth/verification.py",
        f"{_MAC} -> False",
        "the MAC comparison always false: no token passes",
    ),
    (
        "server.py",
        "if condition: size > MAX_HEAD_BYTES -> True",
        "every request refused as too large",
    ),
]


# --- Mutations -------------------------------------------------------------------------------------

SWAPS = {
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


@dataclasses.dataclass
class Site:
    line: int
    what: str  # "kind: before -> after"
    apply: Callable[[], None]  # changes the tree in place
    scope: str = ""  # the qualified name of the function or class around it, or "<module>"


def _skipped(tree: ast.AST) -> set:
    """Nodes not to mutate: docstrings and annotations, with everything under them."""
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            skipped.add(body[0].value)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            skipped.add(node.returns)
        if isinstance(node, ast.arg) and node.annotation:
            skipped.add(node.annotation)
        if isinstance(node, ast.AnnAssign):
            skipped.add(node.annotation)
    return {inner for node in skipped for inner in ast.walk(node)}


def _roots(tree: ast.Module, functions: Optional[tuple]) -> list:
    if functions is None:
        return [tree]
    roots = []
    for qualified in functions:
        scope: list = tree.body
        for part in qualified.split("."):
            node = next(
                n
                for n in scope
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part
            )
            scope = node.body
        roots.append(node)
    return roots


def _replacer(
    parent: ast.AST, field: str, index: Optional[int], new: ast.AST
) -> Callable[[], None]:
    def apply() -> None:
        if index is None:
            setattr(parent, field, new)
        else:
            getattr(parent, field)[index] = new

    return apply


def _setter(node: ast.AST, attr: str, value: object) -> Callable[[], None]:
    return lambda: setattr(node, attr, value)


def _scopes(node: ast.AST, name: str = "<module>", into: Optional[dict] = None) -> dict:
    """{node: the qualified name of the innermost function or class holding it}."""
    into = {} if into is None else into
    into[node] = name
    for child in ast.iter_child_nodes(node):
        inner = name
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = child.name if name == "<module>" else f"{name}.{child.name}"
        _scopes(child, inner, into)
    return into


def sites(tree: ast.Module, functions: Optional[tuple]) -> list:
    """Every mutation of the target code in `tree`, in a fixed order; each applies to this tree."""
    skipped, scopes = _skipped(tree), _scopes(tree)
    found = []
    for root in _roots(tree, functions):
        for parent in ast.walk(root):
            if parent in skipped:
                continue
            here = []
            for field, value in ast.iter_fields(parent):
                children = (
                    [(None, value)]
                    if isinstance(value, ast.AST)
                    else list(enumerate(value))
                    if isinstance(value, list)
                    else []
                )
                for index, child in children:
                    if isinstance(child, ast.AST) and child not in skipped:
                        here += _child_sites(parent, field, index, child)
            here += _node_sites(parent)
            for site in here:
                site.scope = scopes[parent]
            found += here
    return found


def _node_sites(node: ast.AST) -> list:
    """Mutations that change `node` itself."""
    line, shown = (
        getattr(node, "lineno", 0),
        (ast.unparse(node) if isinstance(node, ast.expr) else ""),
    )
    out = []
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            for new in SWAPS.get(type(op), ()):
                ops = list(node.ops)
                ops[k] = new()
                after = ast.unparse(ast.Compare(node.left, ops, node.comparators))
                out.append(Site(line, f"compare: {shown} -> {after}", _setter(node, "ops", ops)))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        after = ast.unparse(ast.BoolOp(new, node.values))
        out.append(Site(line, f"boolean: {shown} -> {after}", _setter(node, "op", new)))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITHMETIC:
        new = ARITHMETIC[type(node.op)]()
        before = ast.unparse(node)
        after = ast.unparse(type(node)(**{**dict(ast.iter_fields(node)), "op": new}))
        out.append(Site(line, f"arithmetic: {before} -> {after}", _setter(node, "op", new)))
    elif isinstance(node, ast.Call):
        for k, keyword in enumerate(node.keywords):
            if keyword.arg is not None:
                rest = node.keywords[:k] + node.keywords[k + 1 :]
                out.append(
                    Site(
                        line,
                        f"keyword removed: {keyword.arg}= from {ast.unparse(node.func)}(...)",
                        _setter(node, "keywords", rest),
                    )
                )
    return out


def _child_sites(parent: ast.AST, field: str, index: Optional[int], child: ast.AST) -> list:
    """Mutations that replace `child` (parent.field, or parent.field[index]) with another node."""
    line = getattr(child, "lineno", getattr(parent, "lineno", 0))
    out = []

    def replace(kind: str, new: ast.AST, before: Optional[str] = None) -> None:
        shown = before if before is not None else ast.unparse(child)
        out.append(
            Site(
                line, f"{kind}: {shown} -> {ast.unparse(new)}", _replacer(parent, field, index, new)
            )
        )

    if isinstance(child, ast.Constant) and not isinstance(parent, ast.JoinedStr):
        value = child.value
        if type(value) is bool:
            replace("constant", ast.Constant(not value))
        elif type(value) in (int, float):
            replace("constant", ast.Constant(value + 1))
        elif type(value) is str:
            replace("constant", ast.Constant("XX" + value + "XX"))
        elif type(value) is bytes:
            replace("constant", ast.Constant(b"XX" + value + b"XX"))
    if (
        isinstance(child, ast.Constant)
        and isinstance(parent, ast.JoinedStr)
        and type(child.value) is str
    ):
        replace("constant in f-string", ast.Constant("XX" + child.value + "XX"))
    if isinstance(child, ast.UnaryOp) and isinstance(child.op, ast.Not):
        replace("not removed", child.operand)
    is_condition = (field == "test" and isinstance(parent, (ast.If, ast.While, ast.IfExp))) or (
        field == "ifs" and isinstance(parent, ast.comprehension)
    )
    if is_condition:
        kind = (
            "comprehension if" if field == "ifs" else f"{type(parent).__name__.lower()} condition"
        )
        replace(kind, ast.Constant(True))
        replace(kind, ast.Constant(False))
    if isinstance(child, ast.Raise) and not (
        isinstance(parent, ast.If) and field == "body" and parent.body == [child]
    ):
        replace(
            "raise removed", ast.Pass(), ast.unparse(child)
        )  # a lone raise under an if: "if condition -> False"
    if (
        isinstance(child, ast.Return)
        and child.value is not None
        and not (isinstance(child.value, ast.Constant) and child.value.value is None)
    ):
        replace("return value", ast.Return(ast.Constant(None)), ast.unparse(child))
    return out


@dataclasses.dataclass(frozen=True)
class Mutant:
    number: int
    target: str
    line: int
    scope: str
    what: str
    occurrence: int  # 0 for the first mutant with this scope and what, 1 for the next...
    source: str

    @property
    def key(self) -> tuple:
        """What EQUIVALENT is keyed by: stable while other code moves, unlike the line."""
        return (TARGETS[self.target].path, self.scope, self.what, self.occurrence)

    @property
    def where(self) -> str:
        return f"{TARGETS[self.target].path}:{self.line} ({self.scope})"


def mutants(names: list) -> tuple:
    """({target: the unmutated source after the ast round trip}, [Mutant]), distinct sources only."""
    baselines, found, seen = {}, [], set()
    for name in names:
        target = TARGETS[name]
        text = (ROOT / target.path).read_text(encoding="utf-8")
        original = ast.unparse(ast.parse(text))
        baselines[name] = original
        seen.add(original)
        for k in range(len(sites(ast.parse(text), target.functions))):
            tree = ast.parse(text)
            site = sites(tree, target.functions)[k]
            site.apply()
            source = ast.unparse(ast.fix_missing_locations(tree))
            if source not in seen:
                seen.add(source)
                occurrence = sum(
                    m.target == name and (m.scope, m.what) == (site.scope, site.what) for m in found
                )
                found.append(
                    Mutant(
                        len(found) + 1, name, site.line, site.scope, site.what, occurrence, source
                    )
                )
    return baselines, found


# --- Running ---------------------------------------------------------------------------------------


def _copy_project(into: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "bench", ".pytest_cache"
    )
    shutil.copytree(ROOT, into, ignore=ignore)
    return into


def run_tests(workdir: Path, target: Target, source: str) -> tuple:
    """Write `source` to the target file in `workdir`, run the target's tests: (outcome, seconds, last line)."""
    path = workdir / target.path
    original = path.read_text(encoding="utf-8")
    path.write_text(source, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *target.tests]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=target.timeout)
        outcome = {0: "survived", 1: "killed"}.get(
            process.returncode, f"killed (pytest exit {process.returncode})"
        )
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the test run and any server it started
        output, _ = process.communicate()
        outcome = "killed (timeout)"
    finally:
        path.write_text(original, encoding="utf-8")
    lines = output.decode("utf-8", "replace").strip().splitlines()
    failed = next(
        (line for line in lines if line.startswith(("FAILED", "ERROR"))), lines[-1] if lines else ""
    )
    return outcome, time.monotonic() - started, failed


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="*", metavar="target", help=f"some of {', '.join(TARGETS)} (default: all)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--only", type=int, nargs="+", help="run these mutants only (numbers from --list)"
    )
    parser.add_argument("--show", type=int, help="print mutant N's source")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    if set(names) - set(TARGETS):
        parser.error(f"unknown target: {', '.join(sorted(set(names) - set(TARGETS)))}")
    baselines, found = mutants(names)
    if args.show:
        print(next(m for m in found if m.number == args.show).source)
        return 0
    if args.list:
        for m in found:
            print(
                f"{m.number:4} {m.where} {m.what}" + (f" [{m.occurrence}]" if m.occurrence else "")
            )
        return 0
    chosen = [m for m in found if not args.only or m.number in args.only]

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        workers: queue.Queue = queue.Queue()
        for k in range(args.jobs):
            workers.put(_copy_project(Path(tmp) / f"w{k}"))

        def run(job: tuple) -> tuple:
            name, source = job
            workdir = workers.get()
            try:
                return run_tests(workdir, TARGETS[name], source)
            finally:
                workers.put(workdir)

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for name, (outcome, seconds, last) in zip(
                names, pool.map(run, [(n, baselines[n]) for n in names])
            ):
                shown = "passed" if outcome == "survived" else outcome
                print(f"baseline {name}: {shown} in {seconds:.1f} s", flush=True)
                if outcome != "survived":
                    print(f"  {last}\nthe unmutated code must pass its tests: nothing run")
                    return 2
            results = {}
            for m, result in zip(chosen, pool.map(run, [(m.target, m.source) for m in chosen])):
                results[m] = result
                outcome, seconds, last = result
                note = (
                    f"  [equivalent: {EQUIVALENT[m.key]}]"
                    if outcome == "survived" and m.key in EQUIVALENT
                    else ""
                )
                print(
                    f"{m.number:4} {outcome:24} {seconds:5.1f} s  {m.where} {m.what}{note}",
                    flush=True,
                )
                if outcome != "survived":
                    print(f"{'':37}{last[:150]}", flush=True)

    print(f"\nscore (killed / total), in {time.monotonic() - started:.0f} s:")
    for name in names:
        ran = [m for m in chosen if m.target == name]
        killed = sum(results[m][0] != "survived" for m in ran)
        equivalent = sum(results[m][0] == "survived" and m.key in EQUIVALENT for m in ran)
        print(
            f"  {name:12} {killed} / {len(ran)} killed, {equivalent} equivalent, "
            f"{len(ran) - killed - equivalent} survived"
        )
    failures = [m for m in chosen if results[m][0] == "survived" and m.key not in EQUIVALENT]
    for path, what, meaning in SANITY:
        matching = [m for m in chosen if TARGETS[m.target].path == path and m.what == what]
        if not matching and not args.only and any(TARGETS[name].path == path for name in names):
            print(f"sanity: no mutant {what!r} in {path}")
            failures.append(None)
        for m in matching:
            print(f"sanity: mutant {m.number} ({meaning}): {results[m][0]}")
            if results[m][0] == "survived":
                failures.append(m)
    stale = set(EQUIVALENT) - {m.key for m in found}
    if stale and not args.only and set(names) == set(TARGETS):
        print(f"EQUIVALENT names mutants that no longer exist: {sorted(stale)}")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
