//! Every storage behaviour, run against both backends: the local filesystem and a real
//! S3-compatible server (s3s-fs, signature-checking) through aws-sdk-s3.

use std::sync::Arc;

use bytes::Bytes;
use jewelshot_storage::{
    local::{LocalConfig, LocalFs},
    s3::{S3Config, S3Store},
    ObjectKey, ObjectStore,
};
use jewelshot_testkit::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

struct Backend {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    _keep: Box<dyn std::any::Any>,
}

fn s3_config(server: &S3Server, public_base_url: &str) -> S3Config {
    S3Config {
        bucket: format!("it-{}", ulid::Ulid::generate().to_string().to_lowercase()),
        endpoint: server.endpoint.clone(),
        path_style: true,
        create_bucket: true,
        access_key_id: S3_ACCESS_KEY.into(),
        secret_access_key: S3_SECRET_KEY.into(),
        public_base_url: public_base_url.into(),
        ..Default::default()
    }
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalFs::new(&LocalConfig {
        root: dir.path().into(),
        public_base_url: "http://cdn.test/files".into(),
        signing_key: "k".into(),
        ..Default::default()
    })
    .expect("local");
    let logs = tempfile::tempdir().expect("logs");
    let server = S3Server::start(logs.path()).expect("s3s-fs (run `just s3s`)");
    let s3 = S3Store::new(&s3_config(&server, "")).await.expect("s3 store");
    vec![
        Backend { name: "local", store: Arc::new(local), _keep: Box::new(dir) },
        Backend { name: "s3", store: Arc::new(s3), _keep: Box::new((server, logs)) },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_round_trips_on_every_backend() {
    let http = reqwest::Client::new();
    for b in backends().await {
        let key = ObjectKey::new("results/u1/j1.jpg").expect("key");
        b.store.health().await.unwrap_or_else(|e| panic!("{}: health {e}", b.name));
        assert!(b.store.get(&key).await.expect("get").is_none(), "{}: absent at first", b.name);
        assert!(!b.store.exists(&key).await.expect("exists"), "{}", b.name);
        let body = Bytes::from(vec![7u8; 200_000]);
        let stored = b.store.put(&key, body.clone(), "image/jpeg").await.expect("put");
        assert_eq!(stored.bytes, 200_000, "{}", b.name);
        assert!(b.store.exists(&key).await.expect("exists"), "{}", b.name);
        let obj = b.store.get(&key).await.expect("get").expect("present");
        assert_eq!(obj.body, body, "{}: same bytes back", b.name);
        assert_eq!(obj.content_type, "image/jpeg", "{}", b.name);
        // Overwrite under the same key (a retried save) replaces, never duplicates.
        b.store.put(&key, Bytes::from_static(b"second"), "image/jpeg").await.expect("overwrite");
        assert_eq!(&b.store.get(&key).await.expect("get").expect("present").body[..], b"second", "{}", b.name);
        let url = b.store.url(&key).await.expect("url");
        // The store reads its own URL back to the key (how a submit recognises an upload).
        assert_eq!(b.store.key_of(&url), Some(key.clone()), "{}: {url}", b.name);
        assert_eq!(b.store.key_of("https://elsewhere.example/x/results/u1/j1.jpg"), None, "{}", b.name);
        match b.name {
            "local" => {
                // Signed and expiring, like the presigned S3 URL (the gateway verifies it).
                let (bare, query) = url.split_once('?').expect("signed");
                assert_eq!(bare, "http://cdn.test/files/results/u1/j1.jpg");
                assert!(query.starts_with("expires=") && query.contains("&sig="), "{url}");
            }
            _ => {
                // A presigned GET works without credentials, and only for this object.
                assert!(url.contains("X-Amz-Signature="), "{url}");
                let r = http.get(&url).send().await.expect("fetch presigned");
                assert_eq!(r.status().as_u16(), 200, "{url}");
                assert_eq!(
                    r.headers().get("cache-control").and_then(|v| v.to_str().ok()),
                    Some(jewelshot_storage::s3::IMMUTABLE)
                );
                assert_eq!(&r.bytes().await.expect("body")[..], b"second");
                let tampered = url.replace("j1.jpg", "j2.jpg");
                assert_eq!(
                    http.get(&tampered).send().await.expect("fetch").status().as_u16(),
                    403,
                    "signature binds the key"
                );
            }
        }
        b.store.delete(&key).await.expect("delete");
        assert!(!b.store.exists(&key).await.expect("exists"), "{}", b.name);
        b.store.delete(&key).await.unwrap_or_else(|e| panic!("{}: delete is idempotent: {e}", b.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_s3_uses_the_cdn_base_when_configured_and_refuses_bad_credentials() {
    let logs = tempfile::tempdir().expect("logs");
    let server = S3Server::start(logs.path()).expect("s3s-fs");
    let cfg = s3_config(&server, "https://cdn.example.com/media/");
    let store = S3Store::new(&cfg).await.expect("store");
    let key = ObjectKey::new("uploads/u/01ARZ3NDEKTSV4RRFFQ69G5FAV.jpg").expect("key");
    store.put(&key, Bytes::from_static(b"x"), "image/jpeg").await.expect("put");
    assert_eq!(
        store.url(&key).await.expect("url"),
        "https://cdn.example.com/media/uploads/u/01ARZ3NDEKTSV4RRFFQ69G5FAV.jpg"
    );

    let wrong = S3Config { secret_access_key: "not-the-secret".into(), create_bucket: false, ..cfg };
    let bad = S3Store::new(&wrong).await.expect("client builds");
    assert!(bad.health().await.is_err(), "s3s checks signatures");
    assert!(bad.put(&key, Bytes::from_static(b"y"), "image/jpeg").await.is_err());
}
