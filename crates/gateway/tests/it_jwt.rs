//! F, acceptance 6: identity-provider JWTs beside API keys, against a JWKS this test serves with
//! real RS256 and ES256 keys (`tests/keys/`). A valid token is 200 and names one user (created on
//! first use, plan from its claim); expired, not yet valid, wrong `aud`, wrong `iss`, unknown
//! `kid`, `alg: none`, HS256 signed with the RSA public key, and a forged signature are 401; a
//! rotated JWKS is picked up without a restart.

mod common;

use std::{collections::HashMap, sync::Arc};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use common::Api;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://id.jewelshot.test/auth/v1";
const AUDIENCE: &str = "authenticated";

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).expect("test key")
}

fn jwks(kids: &[&str]) -> Vec<u8> {
    let all: Value = serde_json::from_slice(&read("jwks.json")).expect("jwks.json");
    serde_json::to_vec(&json!({ "keys": kids.iter().map(|k| all[k].clone()).collect::<Vec<_>>() })).expect("json")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "email": format!("{sub}@example.com"),
        "exp": now() + 600, "iat": now(), "app_metadata": { "plan": "pro" },
    })
}

/// Sign `claims` with the PEM key `file` as `alg`, naming `kid`.
fn sign(alg: Algorithm, file: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let pem = read(file);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_secret(&pem),
    }
    .expect("encoding key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
    format!("{}.{}.", B64.encode(header.to_string()), B64.encode(claims.to_string()))
}

async fn status(api: &Api, token: &str) -> u16 {
    api.call(reqwest::Method::GET, "/api/jobs", Some(token)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_against_a_rotating_jwks() {
    let files = Arc::new(std::sync::Mutex::new(HashMap::from([("/jwks.json".to_owned(), jwks(&["rsa-1", "ec-1"]))])));
    let base = jewelshot_testkit::serve_shared_files(files.clone()).await.expect("jwks server");
    let api = Api::start_with(|c| {
        c.jwt.jwks_url = format!("{base}/jwks.json");
        c.jwt.issuer = ISSUER.into();
        c.jwt.audience = AUDIENCE.into();
        c.jwt.plan_claim = "app_metadata.plan".into();
        c.jwt.min_refresh_secs = 0;
        c.jwt.leeway_secs = 5;
    })
    .await;

    // Valid tokens, both algorithms: one user per subject, created on first use.
    let rs = sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &claims("ada"));
    assert_eq!(status(&api, &rs).await, 200);
    assert_eq!(status(&api, &rs).await, 200);
    let es = sign(Algorithm::ES256, "ec-1.pem", "ec-1", &claims("ada"));
    assert_eq!(status(&api, &es).await, 200);
    let user = api.db.db.user_by_email("ada@example.com").await.expect("query").expect("created on first use");
    assert_eq!(user.plan, "pro", "the plan comes from the claim");
    let (s, body) = api.call(reqwest::Method::GET, "/api/storage", Some(&es)).await;
    assert_eq!(s, 200, "{body}");
    let users = api.db.db.list_users(None, 100).await.expect("users");
    assert_eq!(users.len(), 1, "the same subject is the same user: {users:?}");
    // A token-made user submits like any other.
    let (s, body) = api.submit(&rs, json!({ "image_url": "https://example.com/ring.jpg", "prompt": "shine" })).await;
    assert_eq!(s, 202, "{body}");
    // An API key still works beside them.
    let key = api.key("keyed@example.com").await;
    assert_eq!(status(&api, &key).await, 200);

    let mut refused: Vec<(&str, String)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("ada");
        f(&mut c);
        c
    };
    let expired = with(&|c| {
        c["exp"] = json!(now() - 60);
        c["iat"] = json!(now() - 700);
    });
    refused.push(("expired", sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &expired)));
    let early = with(&|c| c["nbf"] = json!(now() + 300));
    refused.push(("not yet valid", sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &early)));
    let aud = with(&|c| c["aud"] = json!("someone-else"));
    refused.push(("wrong aud", sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &aud)));
    let iss = with(&|c| c["iss"] = json!("https://evil.example/auth/v1"));
    refused.push(("wrong iss", sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &iss)));
    let no_sub = with(&|c| {
        c.as_object_mut().map(|o| o.remove("sub"));
    });
    refused.push(("no sub", sign(Algorithm::RS256, "rsa-1.pem", "rsa-1", &no_sub)));
    refused.push(("unknown kid", sign(Algorithm::RS256, "rsa-2.pem", "rsa-2", &claims("ada"))));
    refused.push(("forged signature", sign(Algorithm::RS256, "rsa-2.pem", "rsa-1", &claims("ada"))));
    refused.push(("alg none", unsigned("rsa-1", &claims("ada"))));
    refused.push(("HS256 with the public key", sign(Algorithm::HS256, "rsa-1.pub.pem", "rsa-1", &claims("ada"))));
    refused.push(("ES256 under an RSA kid", sign(Algorithm::ES256, "ec-1.pem", "rsa-1", &claims("ada"))));
    for (what, token) in &refused {
        let (s, body) = api.call(reqwest::Method::GET, "/api/jobs", Some(token)).await;
        assert_eq!((s, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{what}: {body}");
    }

    // The provider rotates: rsa-2 in, rsa-1 out. No restart.
    files.lock().expect("files").insert("/jwks.json".into(), jwks(&["rsa-2", "ec-1"]));
    let rotated = sign(Algorithm::RS256, "rsa-2.pem", "rsa-2", &claims("ada"));
    assert_eq!(status(&api, &rotated).await, 200, "the new key is fetched when a token names it");
    assert_eq!(status(&api, &rs).await, 401, "the retired key no longer verifies");
    assert_eq!(api.db.db.list_users(None, 100).await.expect("users").len(), 2, "ada and the keyed user only");
}
