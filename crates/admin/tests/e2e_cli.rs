//! The `jewelshot` CLI as an on-call engineer uses it: every command answers `--json` with one
//! JSON value on stdout; exit codes say what went wrong; `jobs cancel` frees the job's place in
//! line at once; `keys revoke` locks a key out; `keys list` never shows a key.

use std::{process::Command, time::Duration};

use jewelshot_testkit::{Stack, StackOptions};
use serde_json::{json, Value};

/// What one run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as the one JSON value `--json` promises.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON value ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

fn jewelshot_with(env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_jewelshot"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run jewelshot");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn jewelshot(stack: &Stack, args: &[&str]) -> Run {
    let redis = stack.redis_url();
    // The stack's key, so the CLI seals secrets the workers can open.
    let key = stack.db.secrets.keys.get("test").cloned().unwrap_or_default();
    // Migrations go to the database itself, never through a transaction pooler (as in production).
    let migrate = args.contains(&"migrate");
    let (url, pooler) = if migrate {
        (stack.db.direct_url.as_str(), "none".to_owned())
    } else {
        (stack.db.url.as_str(), std::env::var("JEWELSHOT_DATABASE__POOLER").unwrap_or_else(|_| "none".into()))
    };
    jewelshot_with(
        &[
            ("JEWELSHOT_DATABASE__POOLER", pooler.as_str()),
            ("JEWELSHOT_DATABASE__URL", url),
            ("JEWELSHOT_QUEUE__NAME", stack.queue_name.as_str()),
            ("JEWELSHOT_QUEUE__REDIS_URL", redis.as_str()),
            ("JEWELSHOT_QUEUE__CLUSTER", if stack.cluster_mode { "true" } else { "false" }),
            ("JEWELSHOT_SECRETS__KEYS__TEST", key.as_str()),
        ],
        args,
    )
}

/// `--json`, checked to succeed and to print one JSON value.
fn json_ok(stack: &Stack, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = jewelshot(stack, &all);
    assert_eq!(run.code, 0, "jewelshot {args:?} failed:\n{}{}", run.stdout, run.stderr);
    run.json()
}

async fn submit(stack: &Stack, key: &str, input: &str, prompt: &str) -> String {
    let (status, body) = stack.submit(key, &json!({ "image_url": input, "prompt": prompt })).await.expect("submit");
    assert_eq!(status, 202, "{body}");
    body["jobId"].as_str().expect("jobId").to_owned()
}

async fn position(stack: &Stack, key: &str, id: &str) -> i64 {
    let (status, job) = stack.get_job(key, id).await.expect("poll");
    assert_eq!(status, 200, "{job}");
    job["queuePosition"].as_i64().expect("queuePosition")
}

/// No workers run: the jobs stay in the dispatch line, so positions only move when the CLI acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cli_cancel_moves_the_next_users_job_up() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (_, key_a, _) = stack.user("a@example.com").await.expect("user a");
    let (_, key_b, _) = stack.user("b@example.com").await.expect("user b");
    let input = stack.input_photo_url(&key_a).await.expect("input");
    let a1 = submit(&stack, &key_a, &input, "a first").await;
    let b1 = submit(&stack, &key_b, &input, "b first").await;
    let a2 = submit(&stack, &key_a, &input, "a second").await;
    assert_eq!(position(&stack, &key_b, &b1).await, 2, "fair order: a1, b1, a2");
    assert_eq!(position(&stack, &key_a, &a2).await, 3);

    let canceled = json_ok(&stack, &["jobs", "cancel", &a1]);
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(position(&stack, &key_b, &b1).await, 1, "the next user's job moved up at once");
    assert_eq!(position(&stack, &key_a, &a2).await, 2);

    let again = jewelshot(&stack, &["jobs", "cancel", &a1]);
    assert_eq!(again.code, 1, "a final job cannot be canceled:\n{}", again.stderr);
    assert!(again.stderr.contains("canceled"), "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cli_every_command_answers_json() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    assert_eq!(
        json_ok(&stack, &["migrate"]),
        json!({ "applied": [], "secretsResealed": 0, "secretsUnopenable": 0 }),
        "migrated by the stack already"
    );
    let user = json_ok(&stack, &["users", "create", "--email", "ops@example.com", "--plan", "free"]);
    assert!(user["webhookSecret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{user}");
    let plan = json_ok(&stack, &["users", "set-plan", "ops@example.com", "pro"]);
    assert_eq!(plan["plan"], "pro");
    let users = json_ok(&stack, &["users", "list"]);
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    assert_eq!(users[0]["plan"], "pro");
    assert!(users[0].get("webhookSecret").is_none(), "lists never show secrets: {users}");

    let issued = json_ok(&stack, &["keys", "create", "--user", "ops@example.com", "--name", "ci"]);
    let key = issued["key"].as_str().expect("key").to_owned();
    let input = stack.input_photo_url(&key).await.expect("input");
    let id = submit(&stack, &key, &input, "json everywhere").await;

    let keys = json_ok(&stack, &["keys", "list"]);
    assert_eq!(keys[0]["name"], "ci", "{keys}");
    let jobs = json_ok(&stack, &["jobs", "list"]);
    assert_eq!(jobs[0]["jobId"], id.as_str(), "{jobs}");
    assert_eq!(jobs[0]["queuePosition"], 1, "positions are real in lists too: {jobs}");
    assert_eq!(jobs[0]["steps"].as_array().map(Vec::len), Some(3), "{jobs}");
    let shown = json_ok(&stack, &["jobs", "show", &id]);
    assert_eq!((shown["queuePosition"].as_i64(), shown["status"].as_str()), (Some(1), Some("queued")), "{shown}");
    let stats = json_ok(&stack, &["queue", "stats"]);
    assert_eq!(stats["jobs"]["queued"], 1, "{stats}");
    assert_eq!(stats["line"]["normal"], 1, "{stats}");
    let dry = json_ok(&stack, &["requeue", "--failed", "--dry-run"]);
    assert_eq!((dry["dryRun"].as_bool(), dry["candidates"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let canceled = json_ok(&stack, &["jobs", "cancel", &id]);
    assert_eq!(canceled["status"], "canceled");
    let requeued = json_ok(&stack, &["requeue", "--job", &id]);
    assert_eq!(requeued["requeued"], 0, "a canceled job is not requeued: {requeued}");
    let revoked = json_ok(&stack, &["keys", "revoke", issued["id"].as_str().expect("id")]);
    assert!(revoked["revokedAt"].is_string(), "{revoked}");

    let out = stack.files.join("cli-compressed.jpg");
    let photo = jewelshot_testkit::fixture_photo();
    let compressed = json_ok(&stack, &["compress", &photo.display().to_string(), &out.display().to_string()]);
    assert!(compressed["bytes"].as_u64().is_some_and(|b| b > 0), "{compressed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cli_revoked_keys_are_refused_and_never_listed() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let second = stack.start_gateway().expect("a second gateway");
    let (_, key, _) = stack.user("shop@example.com").await.expect("user");
    let gateways = [stack.gateway_url().to_owned(), second];
    let status = |k: String, gateway: usize| {
        let req = stack.http.get(format!("{}/api/jobs", gateways[gateway])).bearer_auth(k);
        async move { req.send().await.expect("list").status().as_u16() }
    };
    assert_eq!((status(key.clone(), 0).await, status(key.clone(), 1).await), (200, 200));

    let text = jewelshot(&stack, &["keys", "list"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let json = jewelshot(&stack, &["--json", "keys", "list"]);
    for out in [&text.stdout, &text.stderr, &json.stdout] {
        assert!(!out.contains(&key), "a listed key shows only its first characters:\n{out}");
    }
    assert!(text.stdout.contains(&key[..10]), "the prefix identifies it:\n{}", text.stdout);

    // Revoked by pasting the leaked key itself.
    let revoked = jewelshot(&stack, &["keys", "revoke", &key]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert!(!revoked.stdout.contains(&key), "{}", revoked.stdout);
    // The CLI announces the revocation on Redis; each gateway drops the key when its subscriber
    // reads the message — within milliseconds, but not before the CLI has exited. Within a
    // second proves the announcement, not the 5-s cache expiry, did it.
    let announced = std::time::Instant::now() + Duration::from_secs(1);
    let refused = loop {
        let seen = (status(key.clone(), 0).await, status(key.clone(), 1).await);
        if seen == (401, 401) || std::time::Instant::now() > announced {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, (401, 401), "refused everywhere within a second of the revocation");
    let listed = jewelshot(&stack, &["--json", "keys", "list"]).json();
    assert!(listed[0]["revokedAt"].is_string(), "{listed}");
    let unknown = jewelshot(&stack, &["keys", "revoke", "no-such-key"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
}

/// Exit codes: 2 usage, 3 a dependency unreachable — with `--json`, still one JSON value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cli_exit_codes_say_what_failed() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let db = stack.db.url.clone();
    let closed = "redis://127.0.0.1:1";
    let env = [("JEWELSHOT_DATABASE__URL", db.as_str()), ("JEWELSHOT_QUEUE__REDIS_URL", closed)];
    let stats = jewelshot_with(&env, &["queue", "stats"]);
    assert_eq!(stats.code, 3, "Redis down is not an empty queue:\n{}{}", stats.stdout, stats.stderr);
    let stats = jewelshot_with(&env, &["--json", "queue", "stats"]);
    assert_eq!((stats.code, stats.json()["error"]["kind"].as_str()), (3, Some("unreachable")));

    let no_db =
        [("JEWELSHOT_DATABASE__URL", "postgres://postgres@127.0.0.1:1/x"), ("JEWELSHOT_DATABASE__TIMEOUT_MS", "500")];
    let jobs = jewelshot_with(&no_db, &["--json", "jobs", "list"]);
    assert_eq!((jobs.code, jobs.json()["error"]["kind"].as_str()), (3, Some("unreachable")), "{}", jobs.stdout);

    let usage = jewelshot(&stack, &["requeue"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(usage.stderr.contains("--failed"), "{}", usage.stderr);
    assert_eq!(jewelshot(&stack, &["jobs", "frobnicate"]).code, 2);
    let missing = jewelshot(&stack, &["--json", "jobs", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!((missing.code, missing.json()["error"]["kind"].as_str()), (1, Some("failed")));
}
