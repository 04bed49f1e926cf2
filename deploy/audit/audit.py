"""Check Cargo.lock against a vendored snapshot of the RustSec advisory database, offline.

usage: audit.py [--lock Cargo.lock] [--db deploy/audit/advisory-db] [--local deploy/audit/local]
                [--ignore deploy/audit/ignore.toml] [--today YYYY-MM-DD]
       audit.py --refresh ADVISORY_DB_CHECKOUT    (replace the snapshot with a fresh checkout's)

Advisories are RustSec's own files (a ```toml front matter with [advisory] and [versions],
then markdown), so a refresh is a copy. `local/` holds this project's policy entries in the same
format (crates we moved away from on purpose). A package is affected when its version matches
no `patched` and no `unaffected` requirement. Exit 1 when a vulnerability (or an `unsound`
notice) affects a locked package and is not ignored, or when an ignore is past its review date;
`unmaintained` notices are printed as warnings. Exit 2 on a malformed snapshot or ignore list.
"""
from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import re
import shutil
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
STALE_DAYS = 90


class Malformed(Exception):
    pass


# --- Cargo's semver requirements -------------------------------------------------------------

_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def parse_version(text: str) -> tuple[tuple[int, int, int], tuple, int]:
    """(major, minor, patch), the pre-release key, and how many parts were given."""
    m = _VERSION.match(text.strip())
    if not m:
        raise Malformed(f"not a version: {text!r}")
    parts = [int(p) if p is not None else 0 for p in m.group(1, 2, 3)]
    given = sum(p is not None for p in m.group(1, 2, 3))
    pre = m.group(4)
    # A release sorts after every pre-release of the same version.
    pre_key: tuple = (1,) if pre is None else (0, *[(0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split(".")])
    return (parts[0], parts[1], parts[2]), pre_key, given


def _key(text: str):
    nums, pre, _ = parse_version(text)
    return (nums, pre)


def _comparator(op: str, ver: str):
    """A predicate on a version key for one comparator (`>= 1.2`, `^0.3.1`, `~1.2`, `=1.0.0`)."""
    nums, pre, given = parse_version(ver)
    low = (nums, pre)
    if op in ("^", ""):
        major, minor, patch = nums
        if major > 0 or given == 1:
            high = ((major + 1, 0, 0), (0,))
        elif minor > 0 or given == 2:
            high = ((0, minor + 1, 0), (0,))
        else:
            high = ((0, 0, patch + 1), (0,))
        return lambda v: low <= v < high
    if op == "~":
        major, minor, _ = nums
        high = ((major, minor + 1, 0), (0,)) if given >= 2 else ((major + 1, 0, 0), (0,))
        return lambda v: low <= v < high
    if op == "=":
        if given == 3:
            return lambda v: v == low
        high = ((nums[0], nums[1] + 1, 0), (0,)) if given == 2 else ((nums[0] + 1, 0, 0), (0,))
        return lambda v: low <= v < high
    if op == ">=":
        return lambda v: v >= low
    if op == ">":
        if given == 3:
            return lambda v: v > low
        high = ((nums[0], nums[1] + 1, 0), (0,)) if given == 2 else ((nums[0] + 1, 0, 0), (0,))
        return lambda v: v >= high
    if op == "<":
        return lambda v: v < low
    if op == "<=":
        if given == 3:
            return lambda v: v <= low
        high = ((nums[0], nums[1] + 1, 0), (0,)) if given == 2 else ((nums[0] + 1, 0, 0), (0,))
        return lambda v: v < high
    raise Malformed(f"unknown operator {op!r}")


_COMPARATOR = re.compile(r"^\s*(>=|<=|>|<|=|\^|~)?\s*([0-9][0-9A-Za-z.+-]*)\s*$")


def _comparators(requirement: str) -> list[tuple[str, str]]:
    parts = []
    for part in requirement.split(","):
        m = _COMPARATOR.match(part)
        if not m:
            raise Malformed(f"not a requirement: {requirement!r}")
        parse_version(m.group(2))
        parts.append((m.group(1) or "", m.group(2)))
    return parts


def matches(requirement: str, version: str) -> bool:
    """Whether `version` satisfies a requirement such as `>= 0.3.26, < 0.4.0`, as Cargo decides:
    a pre-release matches only a requirement with a comparator that names a pre-release of the
    same major.minor.patch (so `>= 0.23.18` does not cover `0.24.0-alpha`)."""
    comparators = _comparators(requirement)
    nums, pre, _ = parse_version(version)
    if pre != (1,):
        same = [c for c in comparators if parse_version(c[1])[0] == nums and parse_version(c[1])[1] != (1,)]
        if not same:
            return False
    v = (nums, pre)
    return all(_comparator(op, ver)(v) for op, ver in comparators)


# --- The snapshot ----------------------------------------------------------------------------


def load_advisory(path: pathlib.Path) -> dict:
    text = path.read_text(encoding="utf-8")
    m = re.match(r"^```toml\n(.*?)\n```\n(.*)$", text, re.S)
    if not m:
        raise Malformed(f"{path}: no ```toml front matter")
    try:
        data = tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError as e:
        raise Malformed(f"{path}: {e}") from e
    adv = data.get("advisory", {})
    if "id" not in adv or "package" not in adv:
        raise Malformed(f"{path}: [advisory] needs id and package")
    title = next((line[2:].strip() for line in m.group(2).splitlines() if line.startswith("# ")), "")
    versions = data.get("versions", {})
    for req in versions.get("patched", []) + versions.get("unaffected", []):
        _comparators(req)  # malformed requirements fail when loaded, not when matched
    return {"path": path, "title": title, "versions": versions, **adv}


def load_db(*dirs: pathlib.Path) -> list[dict]:
    out = []
    for d in dirs:
        if d.is_dir():
            out += [load_advisory(p) for p in sorted(d.rglob("*.md")) if p.name != "README.md"]
    return out


def affects(adv: dict, version: str) -> bool:
    v = adv["versions"]
    return not any(matches(r, version) for r in v.get("patched", []) + v.get("unaffected", []))


def locked_packages(lock: pathlib.Path) -> list[tuple[str, str]]:
    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    # Only crates from a registry: the workspace's own crates have no advisories.
    return sorted({(p["name"], p["version"]) for p in data.get("package", []) if p.get("source", "").startswith("registry+")})


def load_ignores(path: pathlib.Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = {}
    for entry in data.get("ignore", []):
        for field in ("id", "reason", "review_by"):
            if field not in entry:
                raise Malformed(f"{path}: every [[ignore]] needs {field}")
        review = entry["review_by"]
        entry["review_by"] = review if isinstance(review, dt.date) else dt.date.fromisoformat(str(review))
        out[entry["id"]] = entry
    return out


def audit(lock: pathlib.Path, dbs: list[pathlib.Path], ignore: pathlib.Path, today: dt.date, out=sys.stdout) -> int:
    loaded = load_db(*dbs)
    advisories = [a for a in loaded if not a.get("withdrawn")]
    if not any(a["id"].startswith("RUSTSEC-") for a in loaded):
        print("error: no RustSec advisory was loaded: the snapshot is missing or empty", file=out)
        return 1
    ignores = load_ignores(ignore)
    packages = locked_packages(lock)
    by_name: dict[str, list[dict]] = {}
    for a in advisories:
        by_name.setdefault(a["package"], []).append(a)
    failed = False
    used = set()
    for name, version in packages:
        for a in by_name.get(name, []):
            if not affects(a, version):
                continue
            kind = a.get("informational") or "vulnerability"
            line = f"{a['id']} {name} {version}: {a['title']} ({kind})"
            if a["id"] in ignores:
                used.add(a["id"])
                ign = ignores[a["id"]]
                if ign["review_by"] < today:
                    failed = True
                    print(f"error: {line}\n  ignored until {ign['review_by']}, which has passed: review it", file=out)
                else:
                    print(f"ignored: {line}\n  why: {ign['reason']} (review by {ign['review_by']})", file=out)
            elif kind in ("vulnerability", "unsound", "policy"):
                failed = True
                patched = ", ".join(a["versions"].get("patched", [])) or "none"
                print(f"error: {line}\n  patched: {patched}", file=out)
            else:
                print(f"warning: {line}", file=out)
    for unused in sorted(set(ignores) - used):
        print(f"warning: ignore {unused} matches nothing in Cargo.lock any more: remove it", file=out)
    print(f"checked {len(packages)} packages against {len(advisories)} advisories: {'FAILED' if failed else 'ok'}", file=out)
    return 1 if failed else 0


def snapshot_age(db: pathlib.Path, today: dt.date) -> None:
    meta = db / "SNAPSHOT"
    if not meta.exists():
        print(f"warning: {meta} is missing: the snapshot's age is unknown")
    else:
        taken = dt.date.fromisoformat(meta.read_text().split()[0])
        age = (today - taken).days
        note = " — stale: `just audit-refresh` on a machine with internet" if age > STALE_DAYS else ""
        print(f"advisory snapshot of {taken} ({age} days old){note}")


def refresh(checkout: pathlib.Path, db: pathlib.Path, today: dt.date) -> int:
    crates = checkout / "crates"
    if not crates.is_dir():
        print(f"{checkout} is not an advisory-db checkout (no crates/)", file=sys.stderr)
        return 2
    files = sorted(crates.rglob("RUSTSEC-*.md"))
    for f in files:
        load_advisory(f)  # refuse a snapshot this checker cannot read
    if (db / "crates").exists():
        shutil.rmtree(db / "crates")
    for f in files:
        dest = db / "crates" / f.relative_to(crates)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    (db / "SNAPSHOT").write_text(f"{today} copied from a checkout of https://github.com/rustsec/advisory-db ({len(files)} advisories)\n")
    print(f"snapshot replaced: {len(files)} advisories")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = ROOT / "deploy/audit"
    p.add_argument("--lock", type=pathlib.Path, default=ROOT / "Cargo.lock")
    p.add_argument("--db", type=pathlib.Path, default=here / "advisory-db")
    p.add_argument("--local", type=pathlib.Path, default=here / "local")
    p.add_argument("--ignore", type=pathlib.Path, default=here / "ignore.toml")
    p.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today())
    p.add_argument("--refresh", type=pathlib.Path, metavar="ADVISORY_DB_CHECKOUT")
    args = p.parse_args(argv)
    try:
        if args.refresh:
            return refresh(args.refresh, args.db, args.today)
        snapshot_age(args.db, args.today)
        return audit(args.lock, [args.db, args.local], args.ignore, args.today)
    except Malformed as e:
        print(f"malformed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
