"""Every relative link and image in the README and ``docs/`` resolves: the file exists and an
``#anchor`` names a heading of the Markdown file it points into, by GitHub's rules for heading ids
(what the code host renders is what a reader clicks)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]

#: ``[text](target)`` and ``![alt](target "title")``; the text may hold one level of brackets.
MARKDOWN_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)=\"([^\"]+)\"", re.IGNORECASE)
HTML_ID = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def pages(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = None if fence else match.group(1)
            continue
        if fence is None:
            out.append((number, line))
    return out


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its rendered text lowercased, every character but letters,
    digits, spaces, hyphens and underscores dropped, each space turned into a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML shows nothing of its tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a Markdown file (a repeated heading gets ``-1``, ``-2``, ... as on GitHub)
    and every explicit HTML ``id`` / ``name``."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ID.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """``"page:line: target (why)"`` for every relative link or image of ``page`` that does not resolve."""
    broken = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        for target in MARKDOWN_LINK.findall(line) + HTML_LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / unquote(path_part)).resolve() if path_part else page
            where = f"{os.path.relpath(page, REPO)}:{number}: {target}"
            if not destination.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(destination):
                broken.append(f"{where} (no heading with this anchor in {destination.name})")
    return broken


def test_github_anchor_by_hand():
    assert github_anchor("Image-only vs concatenation vs MetaBlock") == "image-only-vs-concatenation-vs-metablock"
    assert github_anchor("Resized-image cache (`make preprocess`)") == "resized-image-cache-make-preprocess"
    assert github_anchor("ISIC 2020 / SIIM-ISIC Melanoma Classification") == \
        "isic-2020--siim-isic-melanoma-classification"  # the slash goes, both spaces stay
    assert github_anchor("At a glance: files, classes, groups, default features") == \
        "at-a-glance-files-classes-groups-default-features"
    assert github_anchor("[ABE-M](docs/models.md#abe-m) & **retrieval**") == "abe-m--retrieval"
    assert github_anchor("pad_ufes20 ± 0.5 é") == "pad_ufes20--05-é"


def test_the_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\n```\n## Not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#title) [ok](docs/a.md#same-1) [ok](#top) ![missing](docs/figures/x.png)\n"
        "[bad anchor](docs/a.md#not-a-heading) [web](https://example.org/nothing) `[code](nowhere.md)`\n"
        "<a id=\"top\"></a> <img src=\"docs/none.png\" width=\"200\">\n\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    broken = [b.split(": ", 1)[1] for p in pages(tmp_path) for b in broken_links(p)]
    assert broken == ["docs/figures/x.png (no such file)",
                      "docs/a.md#not-a-heading (no heading with this anchor in a.md)",
                      "docs/none.png (no such file)"]


def test_every_relative_link_and_image_resolves():
    broken = [b for page in pages() for b in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)
