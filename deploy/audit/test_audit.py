"""Tests of audit.py: requirement matching as Cargo reads it, and an audit that can fail.

Run: python3 deploy/audit/test_audit.py (`just audit` runs it first).
"""
import datetime as dt
import io
import pathlib
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import audit  # noqa: E402

ADVISORY = '''```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "h2"
date = "2099-01-01"
{extra}
[versions]
patched = [">= 0.3.26, < 0.4.0", ">= 0.4.4"]
unaffected = ["< 0.2.0"]
```

# A flood

Text.
'''


def lock(*packages):
    body = "version = 4\n"
    for name, version in packages:
        body += f'\n[[package]]\nname = "{name}"\nversion = "{version}"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n'
    body += '\n[[package]]\nname = "ours"\nversion = "0.1.0"\n'
    return body


class Requirements(unittest.TestCase):
    def test_caret_tilde_and_ranges_read_as_cargo_reads_them(self):
        cases = [
            ("^1.2.3", "1.2.3", True), ("^1.2.3", "1.9.0", True), ("^1.2.3", "2.0.0", False),
            ("^1.2.3", "1.2.2", False), ("^0.2.3", "0.2.9", True), ("^0.2.3", "0.3.0", False),
            ("^0.0.3", "0.0.4", False), ("1.2", "1.9.9", True), ("~1.2.3", "1.2.9", True),
            ("~1.2.3", "1.3.0", False), ("= 0.2", "0.2.7", True), ("= 0.2", "0.3.0", False),
            (">= 0.3.26, < 0.4.0", "0.3.26", True), (">= 0.3.26, < 0.4.0", "0.4.0", False),
            (">= 0.3.26, < 0.4.0", "0.3.25", False), ("> 1.0", "1.0.9", False), ("> 1.0", "1.1.0", True),
            ("<= 1.0", "1.0.9", True), (">= 1.0.0", "1.0.0-rc.1", False),
            ("^1.2.3", "2.0.0-alpha", False), (">= 2.0.0", "2.0.1+build.5", True),
            # Cargo: a pre-release matches only a comparator naming a pre-release of its x.y.z.
            ("< 1.0.0", "1.0.0-rc.1", False), ("< 0.101.0", "0.101.0-alpha", False),
            (">= 0.23.18", "0.24.0-alpha", False), ("^2.2.1", "2.3.0-alpha", False),
            (">= 1.0.0-rc.1", "1.0.0-rc.2", True), (">= 1.0.0-rc.1", "1.0.0", True),
            (">= 1.0.0-alpha.2", "1.0.0-alpha.10", True), (">= 1.0.0-beta", "1.0.0-alpha", False),
        ]
        for req, version, want in cases:
            self.assertEqual(audit.matches(req, version), want, f"{req} vs {version}")

    def test_malformed_requirements_are_refused(self):
        for bad in ["", ">= x", "=> 1.0", "1.0 || 2.0", ">= 1.0, <2.x"]:
            with self.assertRaises(audit.Malformed, msg=bad):
                audit.matches(bad, "1.0.0")


class Audit(unittest.TestCase):
    def run_audit(self, packages, extra="", ignore="", today="2099-06-01"):
        with tempfile.TemporaryDirectory() as d:
            d = pathlib.Path(d)
            (d / "db/crates/h2").mkdir(parents=True)
            (d / "db/crates/h2/RUSTSEC-2099-0001.md").write_text(ADVISORY.format(extra=extra))
            (d / "Cargo.lock").write_text(lock(*packages))
            (d / "ignore.toml").write_text(ignore)
            out = io.StringIO()
            code = audit.audit(d / "Cargo.lock", [d / "db"], d / "ignore.toml", dt.date.fromisoformat(today), out)
            return code, out.getvalue()

    def test_an_affected_version_fails_and_a_patched_one_passes(self):
        code, out = self.run_audit([("h2", "0.3.25")])
        self.assertEqual(code, 1, out)
        self.assertIn("RUSTSEC-2099-0001 h2 0.3.25: A flood", out)
        for fine in ["0.3.26", "0.4.4", "0.1.9"]:
            code, out = self.run_audit([("h2", fine)])
            self.assertEqual(code, 0, f"{fine}: {out}")
        code, out = self.run_audit([("other", "0.3.0")])
        self.assertEqual(code, 0, out)

    def test_a_pre_release_of_a_patched_line_is_still_affected(self):
        code, out = self.run_audit([("h2", "0.4.5-alpha.1")])
        self.assertEqual(code, 1, out)

    def test_no_snapshot_is_a_failure_not_a_pass(self):
        with tempfile.TemporaryDirectory() as d:
            d = pathlib.Path(d)
            (d / "Cargo.lock").write_text(lock(("h2", "0.3.0")))
            out = io.StringIO()
            code = audit.audit(d / "Cargo.lock", [d / "missing"], d / "ignore.toml", dt.date(2099, 1, 1), out)
            self.assertEqual(code, 1, out.getvalue())

    def test_unmaintained_warns_and_withdrawn_is_skipped(self):
        code, out = self.run_audit([("h2", "0.4.0")], extra='informational = "unmaintained"')
        self.assertEqual(code, 0, out)
        self.assertIn("warning: RUSTSEC-2099-0001", out)
        code, out = self.run_audit([("h2", "0.4.0")], extra='withdrawn = "2099-02-01"')
        self.assertEqual((code, "RUSTSEC" in out.split("checked")[0]), (0, False), out)

    def test_an_ignore_holds_until_its_review_date(self):
        ignore = '[[ignore]]\nid = "RUSTSEC-2099-0001"\nreason = "not reachable"\nreview_by = 2099-03-01\n'
        code, out = self.run_audit([("h2", "0.4.0")], ignore=ignore, today="2099-02-01")
        self.assertEqual(code, 0, out)
        self.assertIn("why: not reachable", out)
        code, out = self.run_audit([("h2", "0.4.0")], ignore=ignore, today="2099-03-02")
        self.assertEqual(code, 1, out)
        self.assertIn("has passed", out)
        code, out = self.run_audit([("h2", "0.4.4")], ignore=ignore, today="2099-02-01")
        self.assertIn("matches nothing", out)
        with self.assertRaises(audit.Malformed):
            self.run_audit([("h2", "0.4.0")], ignore='[[ignore]]\nid = "RUSTSEC-2099-0001"\n')


class Snapshot(unittest.TestCase):
    def test_the_vendored_snapshot_and_policy_entries_load(self):
        here = pathlib.Path(audit.__file__).parent
        advisories = audit.load_db(here / "advisory-db", here / "local")
        self.assertTrue(any(a["package"] == "rsa" for a in advisories))
        self.assertTrue(all(a["id"] and a["package"] for a in advisories))


if __name__ == "__main__":
    unittest.main(verbosity=1)
