"""README.md and docs/: every relative link resolves to a file of the repository, and every
#anchor to a heading of its page (GitHub's slugs)."""
import glob
import os
import re

import pytest

import utils

PAGES = [os.path.join(utils.PROJECT_DIR, "README.md")] + sorted(glob.glob(os.path.join(utils.PROJECT_DIR, "docs", "*.md")))
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # fenced blocks and inline code: their brackets are no links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set:
    with open(path, encoding="utf-8") as f:
        return {slug(line.lstrip("#")) for line in f if line.startswith("#")}


def test_slugs_follow_github():
    assert slug("What to deploy on a CPU like this one") == "what-to-deploy-on-a-cpu-like-this-one"
    assert slug("Decoding, confidence and abstaining") == "decoding-confidence-and-abstaining"
    assert slug("`run_eval.py` and 2-core CPUs") == "run_evalpy-and-2-core-cpus"


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, utils.PROJECT_DIR) for p in PAGES])
def test_every_relative_link_resolves(page):
    with open(page, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in LINK.findall(CODE.sub("", text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f"{target}: no {os.path.relpath(resolved, utils.PROJECT_DIR)}")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken
