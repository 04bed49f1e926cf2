"""schemathesis hooks for `just schemathesis`: what the spec cannot know about the world.

A submit's `webhook_url` must name a host that resolves to public addresses; this machine has
no public DNS, so every schema-valid host name would be refused at submit as unresolvable (the
same answer an internal name gets, on purpose). A schema-valid webhook host is therefore stood in
for by a loopback receiver (the run's gateway allows loopback webhooks, as development does).
`run_at` is bounded by the clock (at most 30 days ahead), which JSON Schema cannot state: a
schema-valid date later than that is brought inside the window. Nothing else is changed, and
schema-invalid values are left as they are, so negative cases stay negative.
"""
import datetime as dt
import json
import re

import schemathesis

_HOOK_TARGET = "http://127.0.0.1:9/hook"
_schemas = {}


def _pattern(case, field):
    if field not in _schemas:
        spec = case.operation.schema.raw_schema
        _schemas[field] = re.compile(spec["components"]["schemas"]["EditRequest"]["properties"][field]["pattern"])
    return _schemas[field]


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    _visible_query(case)
    if case.operation.path != "/api/ai/edit" or not isinstance(case.body, dict):
        return
    hook = case.body.get("webhook_url")
    if isinstance(hook, str) and _pattern(case, "webhook_url").search(hook) and not hook.startswith("http://127."):
        case.body["webhook_url"] = _HOOK_TARGET
    at = case.body.get("run_at")
    if isinstance(at, str):
        try:
            when = dt.datetime.fromisoformat(at.replace("z", "Z"))
        except ValueError:
            return
        if when.tzinfo is not None and when > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29):
            case.body["run_at"] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()


def _visible_query(case):
    """An empty object or array in the query renders as nothing in form-style encoding, so the
    request sent would be the one without the parameter (a valid one that schemathesis would
    count as a schema-violating request accepted). Send such a value as its JSON text instead,
    so the server sees the wrong type it was meant to get."""
    for k, v in list((case.query or {}).items()):
        if isinstance(v, (dict, list)) and not v:
            case.query[k] = json.dumps(v)
