"""Regenerate the README tables (scorers, config fields): python .ci/update_readme.py"""
import scorers
from raft_diffusion.config import field_docs
s = open("README.md").read()
sc = "| name | what |\n|---|---|\n" + "\n".join(f"| `{n}` | {d.replace('|', '/')} |" for n, d in scorers.describe())
PIPE = "\\|"
cf = "| field | default | meaning |\n|---|---|---|\n" + "\n".join(f"| `{n}` | `{d!r}` | {h.replace('|', PIPE)} |" for n, h, d in field_docs())
import re
s = re.sub(r"(<!-- scorers:[^\n]*-->\n)(?:SCORERS_TABLE|\| name \| what \|\n(?:\|[^\n]*\n)*)", lambda m: m.group(1) + sc + "\n", s)
s = re.sub(r"(<!-- config:[^\n]*-->\n)(?:CONFIG_TABLE|\| field \| default \| meaning \|\n(?:\|[^\n]*\n)*)", lambda m: m.group(1) + cf + "\n", s)
open("README.md", "w").write(s)

import sys
sys.path.insert(0, ".")
from tests.test_bad_input import CASES
s = open("README.md").read()
bad = "| class | case | message contains |\n|---|---|---|\n" + "\n".join(
    f"| {kind} | {cid} | `{frag.replace('{tmp}/', '').replace('{tmp}', 'DIR').replace('|', '/')}` |"
    for kind, cid, _, frag in sorted(CASES, key=lambda c: [k for k, *_ in CASES].index(c[0])))
s = re.sub(r"(<!-- bad-input:[^\n]*-->\n)(?:BAD_INPUT_TABLE|\|(?: class \|)? case \| message contains \|\n(?:\|[^\n]*\n)*)", lambda m: m.group(1) + bad + "\n", s)
open("README.md", "w").write(s)

# the miniworld experiment tables, copied from benchmarks/results (benchmarks/miniworld_experiments.py writes them)
from pathlib import Path
s = open("README.md").read()
for name in ("resolution", "aesthetic"):
    body = Path(f"benchmarks/results/miniworld_{name}.md").read_text().split("\n", 2)[2].strip()
    s = re.sub(rf"(<!-- miniworld-{name}:[^\n]*-->\n).*?(<!-- /miniworld-{name} -->)",
               lambda m: m.group(1) + body + "\n" + m.group(2), s, flags=re.S)
open("README.md", "w").write(s)
