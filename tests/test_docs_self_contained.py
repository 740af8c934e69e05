"""The shipped code, configs and docs cite only what ships or is public: papers by equation, section, algorithm,
appendix or table number, and the project's own ``docs/``. No citation may point at the engineering notes that do
not ship with the project, at the design document outside the repository, or at line numbers of the papers' text
files (those numbers mean nothing to a reader of the PDF).

The patterns are assembled from pieces so that this file does not match itself.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["bilevel_rl", "configs", "scripts", "tests", "docs", "README.md"]
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}

NOTES = "dig" + "est"
DESIGN_DOC = "DESIGN" + "." + "md"
PATTERNS = {
    "engineering-note citation": re.compile(r"\b" + NOTES + r"s?\b", re.IGNORECASE),
    "design-document citation": re.compile(re.escape(DESIGN_DOC)),
    "paper-text line number": re.compile(r"\b" + "L" + r"[0-9]{2,5}\b"),
    "engineering-note item": re.compile("pit" + "fall", re.IGNORECASE),
}


def _text_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(ROOT)
            if not file.is_file() or any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in rel.parts):
                continue
            files.append(file)
    return files


def _lines(file: Path) -> list[str]:
    data = file.read_bytes()
    if b"\0" in data:  # binary (images, checkpoints)
        return []
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def test_no_citations_of_unshipped_documents_or_paper_text_lines():
    hits = []
    for file in _text_files():
        for number, line in enumerate(_lines(file), start=1):
            for what, pattern in PATTERNS.items():
                match = pattern.search(line)
                if match:
                    rel = file.relative_to(ROOT).as_posix()
                    hits.append(f"{rel}:{number}: {what} {match.group(0)!r}: {line.strip()[:160]}")
    assert not hits, (
        f"{len(hits)} citation(s) of unshipped notes or paper-text line numbers; cite the paper by equation / "
        "section / algorithm / appendix / table number, or explain the point in docs/theory/:\n" + "\n".join(hits)
    )


def test_the_scan_sees_the_tree():
    files = {f.relative_to(ROOT).as_posix() for f in _text_files()}
    assert "README.md" in files and "bilevel_rl/upper/hpgd.py" in files and "configs/upper/sobirl.yaml" in files
    assert Path(__file__).resolve().relative_to(ROOT).as_posix() in files
