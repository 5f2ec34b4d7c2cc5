"""Rewrite the settings tables in README.md from the settings' own fields (run after adding one):

    .venv/bin/python scripts/readme_settings.py
"""

from pathlib import Path

from sidecar.setting_docs import render_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
daemon, exchange = render_markdown().strip().split("\n\n")
for marker, table in (("The daemon (`python -m sidecar run`):\n\n", daemon),
                      ("[--always-open]`):\n\n", exchange)):
    start = text.index(marker) + len(marker)
    end = text.index("\n\n", start)
    text = text[:start] + table + text[end:]
readme.write_text(text)
