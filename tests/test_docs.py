"""What the docs cite exists in this repository: every relative link of README.md, docs/ and sweeps/,
and every ``configs/...``, ``docs/...``, ``benchmarks/...`` or ``sweeps/...`` path named there, in a
docstring of the code or in a config's comments. A user who clones the repository can follow all of them."""

import ast
import re
import subprocess
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


# ---- every shell line runs as written -------------------------------------------------------------

BASH_BLOCK = re.compile(r"^( *)```bash\n(.*?)^\1```", re.S | re.M)
SCRIPTS = {"train.py": "train", "merge.py": "merge", "orthoreg_pl.campaign": "campaign",
           "sweeps/slurm_train.sbatch": "train"}  # fmt: skip


def shell_blocks(page: Path) -> list[str]:
    import textwrap

    return [textwrap.dedent(m.group(2)) for m in BASH_BLOCK.finditer(page.read_text())]


def commands(block: str) -> list[list[str]]:
    """Each command line of a block as bash splits it (quotes removed), continuation lines joined."""
    import shlex

    return [
        shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()
    ]


PAGES = [p for p in MARKDOWN if p.exists() and shell_blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shell_block_is_valid_bash(page):
    for block in shell_blocks(page):
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert done.returncode == 0, f"{page.relative_to(ROOT)}: bash -n refuses:\n{block}\n{done.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_line_parses_and_composes(page):
    """What bash hands train.py, merge.py, the campaign and the sbatch template (after removing quotes)
    parses as Hydra overrides and composes: an unquoted list (``overrides.all=["a=b"]``) fails here."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from orthoreg_pl.cli.precheck import job_overrides

    checked = 0
    for block in shell_blocks(page):
        for words in commands(block):
            at = next((i for i, w in enumerate(words) if w in SCRIPTS), None)
            if at is None:
                continue
            kind, args = SCRIPTS[words[at]], words[at + 1 :]
            where = f"{page.relative_to(ROOT)}: {' '.join(words)}"
            for arg in (a for a in args if a not in ("-m", "--multirun")):
                try:
                    OverridesParser.create().parse_override(arg)
                except Exception as err:  # noqa: BLE001 - named in the failure
                    pytest.fail(f"{where}: bash passes {arg!r}, which Hydra cannot parse ({err})")
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                compose(config_name=kind, overrides=job_overrides(args)[0])
            GlobalHydra.instance().clear()
            checked += 1
    assert checked or page.name not in ("campaigns.md", "training.md", "merging.md")
