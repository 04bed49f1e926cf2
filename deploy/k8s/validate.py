#!/usr/bin/env python3
"""Render every overlay with kustomize and check what it would deploy (run by `just k8s`, in
`just lint`):
- every Kubernetes resource against the API's own schema, strictly (kubernetes-validate);
- every KEDA ScaledObject against deploy/k8s/schemas (typos in a CRD are otherwise pruned silently);
- our rules: non-root, read-only root filesystem, no privilege escalation, probes, requests and
  memory limits on every container; termination grace at least the drain the config asks for;
  the ScaledObject's bounds sane.
Usage: validate.py KUBERNETES_VALIDATE_BIN"""
import json, pathlib, subprocess, sys, tempfile

import jsonschema, yaml

here = pathlib.Path(__file__).resolve().parent
validator = sys.argv[1] if len(sys.argv) > 1 else "kubernetes-validate"
keda = json.loads((here / "schemas/keda-scaledobject-v1alpha1.json").read_text())
problems = []

def rendered(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"kustomize {overlay}: {out.stderr}")
    return out.stdout

def check_pod(name, spec, config):
    pod = spec["template"]["spec"]
    sc = pod.get("securityContext", {})
    if not sc.get("runAsNonRoot"):
        problems.append(f"{name}: pod not runAsNonRoot")
    drain = {"jewelshot-gateway": "JEWELSHOT_GATEWAY__SHUTDOWN_GRACE_SECS",
             "jewelshot-worker": "JEWELSHOT_WORKER__SHUTDOWN_GRACE_SECS"}.get(name)
    if drain:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < int(config.get(drain, "0")) + 5:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} < {drain} + 5")
    for c in pod["containers"]:
        csc = c.get("securityContext", {})
        for key, want in [("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
            if csc.get(key) is not want:
                problems.append(f"{name}/{c['name']}: {key} must be {want}")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}/{c['name']}: capabilities not dropped")
        res = c.get("resources", {})
        if not res.get("requests") or "memory" not in res.get("limits", {}):
            problems.append(f"{name}/{c['name']}: needs requests and a memory limit")
        if spec.get("template") and name != "jewelshot-migrate" and "livenessProbe" not in c:
            problems.append(f"{name}/{c['name']}: no liveness probe")

for overlay in sorted((here / "overlays").iterdir()):
    text = rendered(overlay)
    docs = [d for d in yaml.safe_load_all(text) if d]
    config = next((d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "jewelshot-config"), {})
    plain = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(plain, f)
    r = subprocess.run([validator, "--strict", "--quiet", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append(f"{overlay.name}: kubernetes-validate:\n{r.stdout}{r.stderr}")
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "ScaledObject":
            try:
                jsonschema.validate(d, keda)
            except jsonschema.ValidationError as e:
                problems.append(f"{overlay.name}: ScaledObject {name}: {e.message} at {list(e.absolute_path)}")
            s = d["spec"]
            if not 1 <= s.get("minReplicaCount", 0) <= s.get("maxReplicaCount", 100):
                problems.append(f"{name}: keep at least one worker (reconciler, deliveries) and min ≤ max")
        if kind in ("Deployment", "Job"):
            check_pod(name, d["spec"], config)
    print(f"{overlay.name}: {len(docs)} resources rendered and checked")

if problems:
    sys.exit("\n".join(problems))
