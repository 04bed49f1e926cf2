//! Webhook secrets at rest (F): sealed in Postgres under the environment's key, rotated per user
//! with an overlap during which deliveries carry both signatures (checked with the Standard
//! Webhooks reference library), and resealed under a new key by `migrate` / `secrets rewrap`.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{jewelshot, jewelshot_with};
use jewelshot_db::{
    secrets::{Keyring, SecretsConfig},
    Db, DbConfig,
};
use jewelshot_domain::UserId;
use jewelshot_testkit::{
    hooks::{verify_standard_webhooks, Delivery, Receiver},
    Stack, StackOptions, WorkerTweak,
};
use serde_json::{json, Value};

/// Submit a job with `hook` as its webhook and return the delivery once it is made.
async fn delivered(stack: &Stack, key: &str, input: &str, hook: &Receiver, prompt: &str) -> Delivery {
    let before = hook.deliveries().len();
    let body = json!({ "image_url": input, "prompt": prompt, "webhook_url": hook.url });
    let (status, job) = stack.submit(key, &body).await.expect("submit");
    assert_eq!(status, 202, "{job}");
    let id = job["jobId"].as_str().expect("id");
    stack.wait_notification(key, id, "delivered", Duration::from_secs(40)).await.expect("delivered");
    let all = hook.deliveries();
    assert_eq!(all.len(), before + 1, "one delivery per job");
    all[before].clone()
}

fn entries(d: &Delivery) -> usize {
    d.headers.get("webhook-signature").map_or(0, |s| s.split(' ').filter(|e| e.starts_with("v1,")).count())
}

fn json_out(ok: bool, out: &str) -> Value {
    assert!(ok, "{out}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_webhook_secrets_are_sealed_and_rotate_with_an_overlap() {
    let tweak = WorkerTweak::new(|c| c.webhook.poll_interval_ms = 100);
    let mut stack = Stack::start(StackOptions { worker: tweak, ..StackOptions::default() }).await.expect("stack");
    let pg = stack.db.client().await.expect("pg");

    // `users create` prints the secret once; Postgres holds it sealed under the key's id.
    let created = json_out_pair(jewelshot(&stack, &["--json", "users", "create", "--email", "rotate@example.com"]));
    let s1 = created["webhookSecret"].as_str().expect("secret").to_owned();
    let user: UserId = created["id"].as_str().expect("id").parse().expect("user id");
    let rows = pg.query("SELECT key_id, sealed FROM webhook_secrets WHERE user_id = $1", &[&user.to_string()]).await;
    let rows = rows.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>("key_id"), "test");
    let sealed: Vec<u8> = rows[0].get("sealed");
    let raw = base64::engine::general_purpose::STANDARD.decode(&s1["whsec_".len()..]).expect("base64");
    assert!(!contains(&sealed, s1.as_bytes()) && !contains(&sealed, &raw), "the secret is not stored as it is");
    let columns = pg
        .query("SELECT column_name FROM information_schema.columns WHERE table_name = 'users'", &[])
        .await
        .expect("columns");
    assert!(columns.iter().all(|c| !c.get::<_, String>(0).contains("secret")), "users holds no secret");
    assert_eq!(
        stack.db.db.signing_secrets(user).await.expect("open").iter().map(|s| s.expose()).collect::<Vec<_>>(),
        [&s1]
    );

    let (ok, out) = jewelshot(&stack, &["keys", "create", "--user", "rotate@example.com"]);
    let key = out.split_whitespace().find(|w| w.starts_with("jsk_")).unwrap_or_else(|| panic!("{ok} {out}")).to_owned();
    let input = stack.input_photo_url(&key).await.expect("input");
    let hook = Receiver::start().await.expect("receiver");
    hook.answer(204);
    stack.start_worker().expect("worker");

    let d1 = delivered(&stack, &key, &input, &hook, "before").await;
    assert_eq!(entries(&d1), 1);
    assert_eq!(verify_standard_webhooks(&s1, &d1), Ok("verified".into()));

    // A rotation with an hour's overlap: both secrets sign.
    let r = json_out_pair(jewelshot(
        &stack,
        &["--json", "users", "rotate-webhook-secret", "rotate@example.com", "--overlap", "1h"],
    ));
    let s2 = r["webhookSecret"].as_str().expect("secret").to_owned();
    assert_ne!(s1, s2);
    let until: chrono::DateTime<chrono::Utc> = r["previousSignsUntil"].as_str().expect("until").parse().expect("time");
    let left = until - chrono::Utc::now();
    assert!(left > chrono::Duration::minutes(59) && left <= chrono::Duration::minutes(60), "{left}");
    let d2 = delivered(&stack, &key, &input, &hook, "during").await;
    assert_eq!(entries(&d2), 2, "{:?}", d2.headers.get("webhook-signature"));
    assert_eq!(verify_standard_webhooks(&s1, &d2), Ok("verified".into()), "the old secret still verifies");
    assert_eq!(verify_standard_webhooks(&s2, &d2), Ok("verified".into()), "the new one too");
    assert!(verify_standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &d2).is_err());

    // Rotating again with no overlap ends both older secrets at once.
    let r = json_out_pair(jewelshot(
        &stack,
        &["--json", "users", "rotate-webhook-secret", "rotate@example.com", "--overlap", "0s"],
    ));
    let s3 = r["webhookSecret"].as_str().expect("secret").to_owned();
    let d3 = delivered(&stack, &key, &input, &hook, "after").await;
    assert_eq!(entries(&d3), 1);
    assert_eq!(verify_standard_webhooks(&s3, &d3), Ok("verified".into()));
    assert!(verify_standard_webhooks(&s1, &d3).is_err() && verify_standard_webhooks(&s2, &d3).is_err());
    let (ok, out) = jewelshot(&stack, &["users", "rotate-webhook-secret", "nobody@example.com"]);
    assert!(!ok && out.contains("nobody@example.com"), "{out}");

    // A secret from before V8 (plaintext), then a new key: `migrate` seals every secret under it.
    let legacy = UserId::generate();
    pg.execute("INSERT INTO users (id, email) VALUES ($1, 'legacy@example.com')", &[&legacy.to_string()])
        .await
        .expect("legacy user");
    pg.execute(
        "INSERT INTO webhook_secrets (user_id, key_id, sealed) VALUES ($1, 'plaintext', convert_to($2, 'UTF8'))",
        &[&legacy.to_string(), &"whsec_bGVnYWN5LXNlY3JldC1sZWdhY3k="],
    )
    .await
    .expect("legacy secret");
    let total: i64 = pg.query_one("SELECT count(*) FROM webhook_secrets", &[]).await.expect("count").get(0);
    let k2 = jewelshot_db::secrets::new_key();
    let both = [("JEWELSHOT_SECRETS__KEYS__K2", k2.as_str()), ("JEWELSHOT_SECRETS__CURRENT", "k2")];
    let status = json_out_pair(jewelshot_with(&stack, &["--json", "secrets", "status"], &both));
    assert_eq!(status["current"], "k2", "{status}");
    let plain = status["keys"].as_array().expect("keys").iter().find(|k| k["keyId"] == "plaintext").cloned();
    assert_eq!(plain.map(|k| k["secrets"].clone()), Some(json!(1)), "{status}");
    let migrated = json_out_pair(jewelshot_with(&stack, &["--json", "migrate"], &both));
    assert_eq!(migrated["secretsResealed"], json!(total), "{migrated}");
    assert_eq!(migrated["secretsUnopenable"], 0, "{migrated}");
    let again = json_out_pair(jewelshot_with(&stack, &["--json", "secrets", "rewrap"], &both));
    assert_eq!(again["resealed"], 0, "a second run has nothing to do: {again}");

    // Only the new key is needed now; the old one no longer opens anything.
    let k2_only = SecretsConfig { keys: [("k2".to_owned(), k2.clone())].into(), ..Default::default() };
    let db = Db::connect(&DbConfig { url: stack.db.direct_url.clone(), max_connections: 1, ..Default::default() })
        .expect("db")
        .with_keyring(Keyring::from_config(&k2_only).expect("keyring"));
    let opened = db.signing_secrets(legacy).await.expect("legacy opens under k2");
    assert_eq!(opened.iter().map(|s| s.expose()).collect::<Vec<_>>(), ["whsec_bGVnYWN5LXNlY3JldC1sZWdhY3k="]);
    assert_eq!(db.signing_secrets(user).await.expect("opens").iter().map(|s| s.expose()).collect::<Vec<_>>(), [&s3]);
    let err = stack.db.db.signing_secrets(user).await.expect_err("the old keyring lacks k2");
    assert_eq!(err.code(), "secret-unavailable", "{err}");
    // A process without any key does not write plaintext into a database whose secrets are sealed.
    let keyless = Db::connect(&DbConfig { url: stack.db.direct_url.clone(), max_connections: 1, ..Default::default() })
        .expect("db");
    let err = keyless.create_user("plain@example.com", "free").await.expect_err("refused without a key");
    assert_eq!(err.code(), "secret-unavailable", "{err}");
    assert!(keyless.user_by_email("plain@example.com").await.expect("read").is_none(), "nothing half-written");
    let status = json_out_pair(jewelshot(&stack, &["--json", "secrets", "status"]));
    let k2_row = status["keys"].as_array().expect("keys").iter().find(|k| k["keyId"] == "k2").cloned().expect("k2");
    assert_eq!((k2_row["secrets"].clone(), k2_row["configured"].clone()), (json!(total), json!(false)), "{status}");
}

fn json_out_pair((ok, out): (bool, String)) -> Value {
    json_out(ok, &out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
