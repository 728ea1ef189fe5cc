"""Docs: a section of docs/metrics.md or docs/leaderboard.md, where the tables' column
names and marks link (`docs?doc=metrics&section=compute`), so each figure's definition
and caveats are one click from where it is shown."""

import re
from pathlib import Path

import streamlit as st

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = {"metrics": "Metrics: what each number is", "leaderboard": "The leaderboard: pages and rules"}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: `The measured window, repeats and summaries` →
    `the-measured-window-repeats-and-summaries`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(text: str) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """slug → (heading, body) of each `## ` section (the part before the first: slug ""), and
    the slug of each `### ` subsection → its section's, so a link to either opens the section."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    out, parent = {"": ("", parts[0])}, {}
    for heading, body in zip(parts[1::2], parts[2::2]):
        out[slug(heading)] = (heading, body)
        parent.update({slug(sub): slug(heading) for sub in re.findall(r"^### (.+)$", body, flags=re.MULTILINE)})
    return out, parent


linked = st.query_params.get("doc", "metrics")
left, right = st.columns([1, 2])
doc = left.selectbox("Document", list(PAGES), index=list(PAGES).index(linked) if linked in PAGES else 0,
                     format_func=PAGES.get)
path = DOCS / f"{doc}.md"
if not path.is_file():
    st.info(f"The docs are not installed with this copy of the leaderboard: read docs/{doc}.md in the effbench "
            "repository.")
    st.stop()
found, parent = sections(path.read_text())
chosen = st.query_params.get("section", "") if doc == linked else ""
chosen = parent.get(chosen, chosen)
keys = list(found)
section = right.selectbox("Section", keys, index=keys.index(chosen) if chosen in found else 0,
                          format_func=lambda k: found[k][0] or "(introduction)")
st.query_params.from_dict({"doc": doc, "section": section})
heading, body = found[section]
if heading:
    st.header(heading, anchor=False)
# Links between docs files point into the repository; images are not served here.
st.markdown(re.sub(r"!\[[^\]]*\]\([^)]*\)", "", body))
