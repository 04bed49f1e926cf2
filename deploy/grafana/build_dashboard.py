#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/jewelshot.json: the seed's seven metrics, each with the
threshold its alert uses drawn in, and the fleet beside them. Run it after changing a panel
(`python3 deploy/grafana/build_dashboard.py`); `just lint` checks the JSON is current and that
every query names metrics the code exports."""
import json, pathlib, sys

def panel(pid, title, x, y, targets, unit, threshold=None, desc="", w=12, h=8, max_=None):
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    defaults = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "custom": {"thresholdsStyle": {"mode": "line+area" if threshold is not None else "off"}, "fillOpacity": 10},
    }
    if max_ is not None:
        defaults["max"] = max_
    return {
        "id": pid, "type": "timeseries", "title": title, "description": desc,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l} for i, (e, l) in enumerate(targets)],
    }

P = []
P.append(panel(1, "1. API response time (p95 by route)", 0, 0, [(
    'histogram_quantile(0.95, sum by (le, route) (rate(jewelshot_http_request_duration_seconds_bucket{route=~"/api/.*"}[5m])))', "{{route}}")],
    "s", 0.5, "Alert JewelshotApiSlow at 500 ms (submit and poll)."))
P.append(panel(2, "2. AI generation time (fal, p50 and p95)", 12, 0, [
    ('histogram_quantile(0.95, sum by (le) (rate(jewelshot_generation_duration_seconds_bucket[15m])))', "p95"),
    ('histogram_quantile(0.5, sum by (le) (rate(jewelshot_generation_duration_seconds_bucket[15m])))', "p50")],
    "s", 90, "From fal accepting the request to the image. Alert JewelshotGenerationSlow at 90 s."))
P.append(panel(3, "3. Error rate", 0, 8, [
    ('sum(rate(jewelshot_http_requests_total{status=~"5.."}[5m])) / sum(rate(jewelshot_http_requests_total[5m]))', "HTTP 5xx"),
    ('sum(rate(jewelshot_jobs_finished_total{status="failed"}[15m])) / sum(rate(jewelshot_jobs_finished_total[15m]))', "jobs failed")],
    "percentunit", 0.01, "Alerts at 1 % of requests (5xx) and 5 % of finished jobs."))
P.append(panel(4, "4. Queue length (by state)", 12, 8, [
    ('max by (state) (jewelshot_queue_depth)', "{{state}}")],
    "short", 500, "From Redis, the same on every replica. Alert JewelshotQueueBacklog at 500 waiting."))
P.append(panel(5, "4b. Oldest waiting job", 0, 16, [('max(jewelshot_queue_oldest_job_age_seconds)', "oldest")],
    "s", 900, "Alert JewelshotOldestJobWaiting at 15 min.", w=8))
P.append(panel(6, "5. Database connections in use (share of each process's pool)", 8, 16, [
    ('sum by (instance) (jewelshot_db_connections{state="in_use"}) / sum by (instance) (jewelshot_db_connections_max)', "{{instance}}"),
    ('sum(jewelshot_db_waiting)', "waiting (all)")],
    "percentunit", 0.8, "Alert JewelshotDbPoolSaturated at 80 %.", w=8, max_=1))
P.append(panel(7, "6. Storage used (share of capacity)", 16, 16, [
    ('max(jewelshot_storage_bytes) / max(jewelshot_storage_capacity_bytes > 0)', "used")],
    "percentunit", 0.8, "Alert JewelshotStorageNearlyFull at 80 %.", w=8, max_=1))
P.append(panel(8, "7. Bandwidth (by direction)", 0, 24, [
    ('sum by (direction) (rate(jewelshot_bandwidth_bytes_total[5m]))', "{{direction}}")],
    "Bps", None, "Bytes a second: files served, uploads received, results downloaded from fal."))
P.append(panel(9, "7b. Bandwidth: last 30 days against the monthly quota", 12, 24, [
    ('sum(increase(jewelshot_bandwidth_bytes_total[30d])) / max(jewelshot_bandwidth_quota_bytes > 0)', "used")],
    "percentunit", 0.8, "Alert JewelshotBandwidthQuota at 80 %."))
P.append(panel(10, "fal spend, last 30 days (budget drawn)", 0, 32, [
    ('sum(sum by (model) (increase(jewelshot_fal_submits_total{outcome="accepted"}[30d])) * on (model) max by (model) (jewelshot_fal_price_usd))', "spend"),
    ('max(jewelshot_fal_budget_usd)', "budget")],
    "currencyUSD", None, "Accepted requests × the configured price. Alert JewelshotFalSpendOverBudget over the budget.", w=8))
P.append(panel(11, "fal accounts and 429s", 8, 32, [
    ('max by (state) (jewelshot_upstream_accounts)', "{{state}}"),
    ('sum(rate(jewelshot_fal_submits_total{outcome="upstream-rate-limited"}[5m]))', "429s/s")],
    "short", None, "Alerts: JewelshotFalAccountsDisabled, JewelshotFalRateLimited.", w=8))
P.append(panel(12, "Workers alive, webhooks, reconciler", 16, 32, [
    ('max(jewelshot_workers_alive)', "workers alive"),
    ('sum by (outcome) (rate(jewelshot_webhook_deliveries_total[5m]))', "webhooks {{outcome}}/s"),
    ('sum by (action) (increase(jewelshot_reconciler_actions_total[15m]))', "reconciler {{action}}")],
    "short", None, "Alert JewelshotNoWorkers when jobs wait and none is alive.", w=8))

board = {
    "uid": "jewelshot", "title": "JewelShot", "tags": ["jewelshot"], "timezone": "utc",
    "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": False,
    "time": {"from": "now-6h", "to": "now"},
    "panels": P,
}
out = pathlib.Path(__file__).resolve().parent / "dashboards" / "jewelshot.json"
text = json.dumps(board, indent=2) + "\n"
if "--check" in sys.argv:
    import re, shutil, subprocess, tempfile
    if out.read_text() != text:
        sys.exit(f"{out} is not what build_dashboard.py writes: run it")
    # Every metric a query names is one the code exports.
    names = pathlib.Path(__file__).resolve().parents[2] / "crates/domain/src/metric_names.rs"
    known = set(re.findall(r'"(jewelshot_[a-z_]+)"', names.read_text()))
    exprs = [t["expr"] for p in P for t in p["targets"]]
    for e in exprs:
        for used in re.findall(r"jewelshot_[a-z_]+", e):
            base = re.sub(r"_(bucket|count|sum)$", "", used)
            if base not in known:
                sys.exit(f"unknown metric {used} in: {e}")
    # And every query parses (as a recording rule promtool checks).
    if shutil.which("promtool"):
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write("groups:\n  - name: board\n    rules:\n")
            for i, e in enumerate(exprs):
                f.write(f"      - record: board:q{i}\n        expr: {json.dumps(e)}\n")
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stdout + r.stderr)
    print(f"{out.name}: current, {len(P)} panels, {len(exprs)} queries over known metrics")
else:
    out.write_text(text)
    print(f"wrote {out}")
