"""docs/errors.md lists every message the package raises or warns with, and its fix.

Each ``raise SomeError(message)`` and each warning call in ``lightning_losses/`` is found in the
source; the first words of its message's first literal phrase must appear in the page. A new
message without its entry fails here, so the page cannot fall behind the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_losses"
PAGE = ROOT / "docs" / "errors.md"
WARNING_CALLS = {"rank_zero_warn", "rank_zero_info", "_warnings.warn", "warnings.warn"}
#: Errors no user input reaches (an internal invariant); they are not documented.
INTERNAL = {"AssertionError", "KeyError"}
WORDS = 6


def _literal_parts(node: ast.expr) -> list[str | None]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value if isinstance(v, ast.Constant) else None for v in node.values]  # type: ignore[misc]
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return [None]


def phrase(node: ast.expr) -> str | None:
    """The first words of the message's first literal phrase of three words or more."""
    for part in _literal_parts(node):
        if part is None:
            continue
        words = part.strip(" .;:,()'\"").split()
        if len(words) >= 3:
            return " ".join(words[:WORDS])
    return None  # a message built elsewhere, or a bare placeholder


def messages() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            call = None
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = ast.unparse(node.exc.func)
                if name.endswith(("Error", "Exception")) and name not in INTERNAL:
                    call = node.exc
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in WARNING_CALLS:
                call = node
            if call is not None and call.args:
                said = phrase(call.args[0])
                if said is not None:
                    where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    found.append((where, said))
    return found


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", ""))


MESSAGES = messages()


def test_the_package_has_messages_to_check():
    assert len(MESSAGES) >= 100


@pytest.mark.parametrize(("where", "said"), MESSAGES, ids=[w for w, _ in MESSAGES])
def test_each_message_is_listed_with_its_fix(where, said):
    assert _normal(said) in _normal(PAGE.read_text()), f"{where}: {said!r} not in docs/errors.md"
