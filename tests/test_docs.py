"""The docs stay true to the tree: every link and section reference lands on a file and a heading,
the option lists of docs/training.md are the files of conf/, and the modules they name exist.

References in comments, docstrings and messages take one form, a path from the repository's root
and a heading's anchor: ``docs/training.md#configuration-groups-conf``. Pure file reading: no
training, no config composition."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = [
    *sorted((ROOT / "conf").rglob("*.yaml")),
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "scripts").glob("*.py")),
    ROOT / "Makefile",
    *(GPU := sorted(path for path in (ROOT / "gpu").iterdir() if path.is_file())),
]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images too
REFERENCE = re.compile(r"\b((?:README|docs/[\w-]+)\.md)(?:#([\w-]+))?")  # README.md#x, docs/x.md#x
# Sections named in words, which no test can follow: "README, Speed", "README's", "docs/x.md, SLURM",
# "docs/x.md (Configuration groups)", "docs/x.md's table".
LOOSE = re.compile(r"\bREADME\b(?!\.md)|\b[\w/-]+\.md(?:'s\b|, [A-Z]| \([A-Z])")
MODULE = re.compile(r"\bsemseg(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = ("json", "yaml", "csv", "txt", "onnx")  # semseg.json: an export's file, not a module
# Hydra's own groups: their options come from installed plugins too (docs/training.md#sweeps).
UNLISTED_GROUPS = ("hydra",)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped but ``-`` and ``_``, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings (outside fenced code), a repeated one numbered as GitHub does."""
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.+)", line)
        if heading and not fenced:
            anchor, n = slug(heading.group(1)), 1
            while anchor in found:
                anchor, n = f"{slug(heading.group(1))}-{n}", n + 1
            found.add(anchor)
    return found


def lines(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        yield f"{path.relative_to(ROOT)}:{number}", line


def target_problem(base: Path, target: str) -> str | None:
    """Why ``target`` (``file#anchor``, ``file`` or ``#anchor``, relative to the folder ``base``) leads
    nowhere, or None."""
    file, _, anchor = target.partition("#")
    path = (base / file).resolve() if file else None
    if path is not None and not path.exists():
        return f"no file {file}"
    if anchor and path is not None and path.suffix != ".md":
        return f"an anchor into {file}, which is not Markdown"
    return None if not anchor or anchor in anchors(path) else f"no heading whose anchor is #{anchor}"


def test_every_relative_link_of_the_docs_lands_on_a_file_and_a_heading():
    broken = []
    for doc in DOCS:
        for where, line in lines(doc):
            for target in LINK.findall(line):
                if "://" in target or target.startswith("mailto:"):
                    continue
                target = target if not target.startswith("#") else f"{doc.name}{target}"
                problem = target_problem(doc.parent, target)
                if problem:
                    broken.append(f"{where}: ({target}): {problem}")
    assert not broken, "\n".join(broken)


def test_references_in_code_configs_and_docs_land_on_a_file_and_a_heading():
    broken = []
    for path in [*CODE, *DOCS]:
        for where, line in lines(path):
            for file, anchor in REFERENCE.findall(line):
                problem = target_problem(ROOT, f"{file}#{anchor}" if anchor else file)
                if problem:
                    broken.append(f"{where}: {file}{'#' if anchor else ''}{anchor}: {problem}")
    assert not broken, "\n".join(broken)


def test_sections_are_named_by_anchor_not_in_words():
    loose = [f"{where}: {line.strip()}" for path in [*CODE, *DOCS] for where, line in lines(path) if LOOSE.search(line)]
    assert not loose, "name a section as README.md#<anchor> or docs/<file>.md#<anchor>:\n" + "\n".join(loose)


def documented_options() -> dict[str, set[str]]:
    """The table of docs/training.md#configuration-groups-conf: each group (first cell) and the
    options in backticks in its second cell."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("\n## Configuration groups (`conf/`)\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 3:
            table[cells[1].strip().strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def conf_options() -> dict[str, set[str]]:
    """Each config group of conf/ (a folder of YAML files, by its path) and its options."""
    groups = {}
    for folder in sorted(path for path in (ROOT / "conf").rglob("*") if path.is_dir()):
        group = folder.relative_to(ROOT / "conf").as_posix()
        options = {path.stem for path in folder.glob("*.yaml")}
        if options and group.split("/")[0] not in UNLISTED_GROUPS:
            groups[group] = options
    return groups


def test_the_docs_list_every_option_of_every_config_group():
    documented, files = documented_options(), conf_options()
    differences = [
        f"{group}: missing from the docs {sorted(files.get(group, set()) - listed)}, "
        f"not in conf/{group}/ {sorted(listed - files.get(group, set()))}"
        for group in sorted(documented.keys() | files.keys())
        if (listed := documented.get(group, set())) != files.get(group, set())
    ]
    assert not differences, "docs/training.md#configuration-groups-conf against conf/:\n" + "\n".join(differences)


def defines(module_file: Path, name: str) -> bool:
    """True when ``name`` is a top-level definition, assignment or import of the module."""
    names = set()
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return name in names


def module_problem(dotted: str) -> str | None:
    """Why ``semseg.a.b[.Name]`` names nothing: its longest prefix that is a module, then a name the
    module defines."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:end]))
        except ImportError:  # a prefix that is a module but not a package
            spec = None
        if spec is not None:
            break
    if spec is None or spec.origin is None:
        return "no such module"
    rest = parts[end:]
    if rest and not defines(Path(spec.origin), rest[0]):
        return f"{'.'.join(parts[:end])} defines no {rest[0]}"
    return None


def test_modules_the_docs_and_configs_name_exist():
    named = {
        (name, where)
        for path in [*DOCS, *GPU, *sorted((ROOT / "conf").rglob("*.yaml"))]
        for where, line in lines(path)
        for name in MODULE.findall(line)
        if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES
    }
    missing = [f"{where}: {name}: {problem}" for name, where in sorted(named) if (problem := module_problem(name))]
    assert not missing, "\n".join(missing)
