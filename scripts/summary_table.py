"""Print the README's summary table from the studies' raw files (docs/studies/*/results.csv).

python scripts/summary_table.py            # the table, as the README holds it
python scripts/summary_table.py --readme   # rewrite the copies in README.md and docs/results.md (between their markers)
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning_ehf.study.summary import SUMMARY_STUDIES, compare_study, markdown

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- summary-table:start -->\n", "\n<!-- summary-table:end -->"

if __name__ == "__main__":
    comparisons = [
        c for name in SUMMARY_STUDIES for c in compare_study(ROOT / "docs" / "studies" / name / "results.csv")
    ]
    table = "\n".join(markdown(comparisons))
    if "--readme" in sys.argv[1:]:
        for document in (ROOT / "README.md", ROOT / "docs" / "results.md"):
            head, rest = document.read_text().split(START, 1)
            document.write_text(head + START + table + END + rest.split(END, 1)[1])
            print(f"rewrote the summary table in {document} ({len(comparisons)} comparisons)")
    else:
        print(table)
