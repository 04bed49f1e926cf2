#!/usr/bin/env python3
"""Every alert in alerts.yml links to a section of docs/runbook.md that exists, and every alert
has a severity and a summary. Run by `just lint`."""
import pathlib, re, sys

root = pathlib.Path(__file__).resolve().parents[2]
rules = (root / "deploy/prometheus/alerts.yml").read_text()
runbook = (root / "docs/runbook.md").read_text()
anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', runbook))
alerts = re.findall(r"- alert: (\w+)(.*?)(?=\n      - alert: |\n  - name: |\Z)", rules, re.S)
bad = []
for name, body in alerts:
    m = re.search(r"runbook_url: docs/runbook\.md#([a-z0-9-]+)", body)
    if not m:
        bad.append(f"{name}: no runbook_url")
    elif m.group(1) not in anchors:
        bad.append(f"{name}: docs/runbook.md has no section #{m.group(1)}")
    if "severity:" not in body or "summary:" not in body:
        bad.append(f"{name}: needs a severity label and a summary")
if not alerts:
    bad.append("no alerts found")
if bad:
    sys.exit("\n".join(bad))
print(f"{len(alerts)} alerts, each with a runbook section")
