"""What the docs cite exists in this repository: every relative link of README.md, docs/ and sweeps/,
and every ``configs/...``, ``docs/...``, ``benchmarks/...`` or ``sweeps/...`` path named there, in a
docstring of the code or in a config's comments. A user who clones the repository can follow all of them."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "sweeps" / "README.md"]
CODE = [
    *sorted((ROOT / "orthoreg_pl").rglob("*.py")),
    *sorted((ROOT / "callbacks").glob("*.py")),
    ROOT / "train.py",
    ROOT / "merge.py",
]
PATH = re.compile(r"(?<![\w/.-])((?:configs|docs|benchmarks|sweeps)/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"[<>{}*$]")


def docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))),
    ]
    return "\n".join(ast.get_docstring(n) or "" for n in nodes)


def sources() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in MARKDOWN if p.exists()}
    texts.update({str(p.relative_to(ROOT)): docstrings(p) for p in CODE})
    texts.update(
        {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "configs").rglob("*.yaml"))}
    )
    return texts


def cited_paths(text: str) -> set[str]:
    found = set()
    for match in PATH.finditer(text):
        path = match.group(1).rstrip("/.")
        if PLACEHOLDER.search(text[match.end() : match.end() + 1]) or "..." in path:
            continue  # a pattern such as configs/experiment/<name>.yaml
        found.add(path)
    return found


@pytest.mark.parametrize("source", sorted(sources()))
def test_every_cited_path_exists(source):
    missing = sorted(p for p in cited_paths(sources()[source]) if not (ROOT / p).exists())
    assert not missing, f"{source} names paths the repository lacks: {missing}"


@pytest.mark.parametrize("page", [p for p in MARKDOWN if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor of the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files the repository lacks: {broken}"


def test_the_docs_pages_exist_and_the_readme_is_short():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"training.md", "merging.md", "analysis.md", "campaigns.md", "data.md", "import.md", "runs.md",
            "method.md", "development.md"} <= pages  # fmt: skip
    assert len((ROOT / "README.md").read_text()) <= 10_000
