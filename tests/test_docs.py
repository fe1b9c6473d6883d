"""The documentation site builds cleanly, and the Python snippets on its pages and in the README
still run.

Every ```` ```python ```` block in ``docs/*.md`` and ``README.md`` is a complete program unless
the line before its fence says otherwise:

* ``<!-- snippet: fragment -->``: not a program (a method body, or code that uses names such as
  ``model`` or ``train_loader`` that the page leaves to the reader); it is only compiled.
* ``<!-- snippet: continue -->``: runs after the previous runnable snippet of the same page, in
  its namespace (a page that builds one program over several blocks).

Runnable snippets are executed in this process (importing torch and Lightning again for each
would cost seconds per snippet), each chain in a fresh namespace named ``__main__``, with the
working directory in a temporary folder and W&B offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [*sorted(DOCS.glob("*.md")), README]

MARKER = re.compile(r"^<!--\s*snippet:\s*(?P<kind>[\w-]+)\s*-->\s*$")
FENCE = re.compile(r"^\s*(?P<fence>`{3,})\s*(?P<lang>[\w+-]*)")
KINDS = {"fragment", "continue"}
#: packages of the optional extras that snippets use: without them, those snippets are skipped
OPTIONAL = {"torchjd", "wandb", "matplotlib", "transformers", "jsonargparse"}


@dataclass
class Snippet:
    page: str  # relative to the repository root
    line: int  # 1-based line of the first line of code
    code: str
    kind: str  # "run", "fragment" or "continue"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def compiled(self):
        # leading blank lines make tracebacks point at the Markdown file's own line numbers
        source = "\n" * (self.line - 1) + textwrap.dedent(self.code)
        return compile(source, str(ROOT / self.page), "exec")


@dataclass
class Chain:
    """A runnable snippet and the ``continue`` snippets that follow it on its page."""

    snippets: list[Snippet] = field(default_factory=list)

    @property
    def where(self) -> str:
        return self.snippets[0].where


def python_snippets(page: Path) -> list[Snippet]:
    lines = page.read_text(encoding="utf-8").splitlines()
    name = page.relative_to(ROOT).as_posix()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, lang = opened["fence"], opened["lang"]
        end = i + 1
        closing = re.compile(rf"`{{{len(fence)},}}\s*")
        while end < len(lines) and not closing.fullmatch(lines[end].strip()):
            end += 1
        if lang == "python":
            previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            marked = MARKER.match(previous.strip())
            kind = marked["kind"] if marked else "run"
            if kind != "run" and kind not in KINDS:
                raise ValueError(f"{name}:{i + 1}: unknown snippet marker {kind!r}")
            snippets.append(Snippet(name, i + 2, "\n".join(lines[i + 1 : end]) + "\n", kind))
        i = end + 1
    return snippets


def chains(snippets: list[Snippet]) -> list[Chain]:
    found: list[Chain] = []
    for snippet in snippets:
        if snippet.kind == "run":
            found.append(Chain([snippet]))
        elif snippet.kind == "continue":
            if not found or found[-1].snippets[0].page != snippet.page:
                raise ValueError(f"{snippet.where}: 'continue' with no runnable snippet before it")
            found[-1].snippets.append(snippet)
    return found


SNIPPETS = [s for page in PAGES for s in python_snippets(page)]
CHAINS = chains(SNIPPETS)
FRAGMENTS = [s for s in SNIPPETS if s.kind == "fragment"]


def test_mkdocs_build_is_strictly_clean(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_the_docs_have_runnable_snippets():
    assert len(CHAINS) >= 10, [c.where for c in CHAINS]


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: c.where)
def test_snippet_runs(chain, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    namespace = {"__name__": "__main__", "__file__": str(ROOT / chain.snippets[0].page)}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for snippet in chain.snippets:
                exec(snippet.compiled(), namespace)
        if chain.snippets[0].page == "README.md":  # the quick start: nothing of ours to say
            from lightning_losses import LossDictWarning

            package = str(ROOT / "lightning_losses")
            ours = [
                f"{w.filename}:{w.lineno}: {w.message}"
                for w in caught
                if issubclass(w.category, LossDictWarning) or w.filename.startswith(package)
            ]
            assert not ours, f"{chain.where} drew warnings of ours: {ours}"
    except ModuleNotFoundError as error:
        if error.name not in OPTIONAL:
            raise
        pytest.skip(f"{chain.where} needs {error.name} (an optional extra)")
    finally:
        if "wandb" in sys.modules and any("wandb" in s.code for s in chain.snippets):
            sys.modules["wandb"].teardown()  # stop the service process the snippet started


@pytest.mark.parametrize("snippet", FRAGMENTS, ids=lambda s: s.where)
def test_fragment_compiles(snippet):
    snippet.compiled()


README_TEXT = README.read_text(encoding="utf-8")
#: Markdown links and images, ``[text](target)`` / ``![alt](target)``, and HTML ``src=``/``href=``
LINK = re.compile(
    r"(?P<image>!?)\[[^\]]*\]\((?P<target>[^)\s]+)\)|(?:src|href)=\"(?P<html>[^\"]+)\""
)


def test_the_readme_is_short_and_has_runnable_snippets():
    assert len(README_TEXT.splitlines()) <= 250
    assert sum(chain.snippets[0].page == "README.md" for chain in CHAINS) >= 3


def test_the_readme_has_no_relative_image_and_no_broken_relative_link():
    # a package index shows the README without the repository: a relative image breaks there
    for found in LINK.finditer(README_TEXT):
        target = found["target"] or found["html"]
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert not found["image"] and not found["html"], f"relative image in README: {target}"
        assert (ROOT / target.split("#")[0]).exists(), f"README links to a missing {target}"


def test_the_readme_test_command_is_what_ci_runs():
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("python -m pytest")
    ]
    assert commands == ["python -m pytest -q"]
    assert "\npython -m pytest -q\n" in README_TEXT
    assert "python examples/multitask.py" in README_TEXT
