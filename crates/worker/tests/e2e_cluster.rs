//! Issue H ("managed services as they really are"): Redis Cluster. The test starts a real
//! three-master cluster (`redis-server --cluster-enabled yes`, slots assigned by
//! `redis-cli --cluster create`); the gateway and two workers run in cluster mode on it. Jobs
//! go through the whole system — the gateway's submit script and poll snapshots, the dispatch
//! line and the fleet's limiter (its wake-ups are pub/sub), apalis-redis's task records and
//! worker registry, the reconciler's lease — and every key lands in the one slot cluster mode
//! chooses, served by one node. A queue name without the hash tag is refused at start.

use std::time::Duration;

use jewelshot_testkit::{bin_path, Stack, StackOptions};
use redis::cluster_routing::Slot;
use serde_json::json;

/// `CLUSTER KEYSLOT core:apalis:queues:list`.
const SLOT: u16 = 2813;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_jobs_run_end_to_end_on_a_three_node_redis_cluster() {
    assert_eq!(Slot::for_key(jewelshot_queue::CLUSTER_SLOT_KEY), Slot::new(SLOT).expect("slot"));
    let opts = StackOptions {
        redis_cluster: true,
        emulator_args: ["--latency-ms", "100-300", "--max-concurrent", "2", "--max-per-minute", "0"]
            .map(String::from)
            .to_vec(),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack");
    stack.start_worker().expect("worker 0");
    stack.start_worker().expect("worker 1");
    let (_, key, _) = stack.user("cluster@example.com").await.expect("user");
    let input = stack.input_photo_url(&key).await.expect("upload");

    // More jobs than the account runs at once: some wait in the line, with positions.
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, body) = stack
            .submit(&key, &json!({"imageUrl": input, "prompt": format!("enhance lighting {i}")}))
            .await
            .expect("submit");
        assert_eq!(status, 202, "{body}");
        assert!(body["queuePosition"].as_u64().is_some(), "a position from the cluster: {body}");
        ids.push(body["jobId"].as_str().expect("job id").to_owned());
    }
    for id in &ids {
        let done = stack.wait_final(&key, id, Duration::from_secs(90)).await.expect("final");
        assert_eq!(done["status"], "complete", "{done}");
        assert!(done["imageUrl"].as_str().is_some_and(|u| !u.is_empty()), "{done}");
    }

    // Everything the system keeps lives in one slot, on the one node that serves it.
    // The two counts are read one after the other while the system runs, so a key that expires
    // or appears between them (a lease, a lock) can make them differ for a moment; a key outside
    // the slot makes them differ at every reading.
    let cluster = stack.cluster.as_ref().expect("a cluster stack");
    let mut readings = Vec::new();
    for _ in 0..10 {
        let counts = cluster.keys_in_slot(SLOT).expect("countkeysinslot");
        let holders: Vec<(u16, u64)> = counts.iter().copied().filter(|(_, n)| *n > 0).collect();
        assert_eq!(holders.len(), 1, "one node serves the slot: {counts:?}");
        assert!(holders[0].1 >= 5, "the queue's, the line's and the limiter's keys: {counts:?}");
        let all = cluster.keys().expect("dbsize");
        readings.push((holders[0].1, all));
        if all == holders[0].1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(readings.iter().any(|(slot, all)| slot == all), "no key outside the slot: (in slot, all) {readings:?}");

    // The CLI in cluster mode: a revocation announced over the cluster's pub/sub (published
    // through whichever node the client picks, heard by the gateway's subscriber on the first)
    // reaches the gateway well before its 5-s credential cache would expire.
    assert_eq!(stack.get_job(&key, &ids[0]).await.expect("poll").0, 200);
    let out = std::process::Command::new(bin_path("jewelshot"))
        .args(["keys", "revoke", &key])
        .env("JEWELSHOT_DATABASE__URL", &stack.db.url)
        .env("JEWELSHOT_QUEUE__NAME", &stack.queue_name)
        .env("JEWELSHOT_QUEUE__REDIS_URL", &cluster.url)
        .env("JEWELSHOT_QUEUE__CLUSTER", "true")
        .envs(jewelshot_testkit::config_env("JEWELSHOT_SECRETS", &stack.db.secrets, &Default::default()).expect("env"))
        .output()
        .expect("run jewelshot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let refused = loop {
        let status = stack.get_job(&key, &ids[0]).await.expect("poll").0;
        if status == 401 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, 401, "the revocation crossed the cluster within a second");
}

#[test]
fn e2e_a_queue_name_outside_the_clusters_slot_is_refused_at_start() {
    let out = std::process::Command::new(bin_path("jewelshot-gateway"))
        .env("JEWELSHOT_QUEUE__CLUSTER", "true")
        .env("JEWELSHOT_QUEUE__REDIS_URL", "redis://127.0.0.1:1")
        .env("JEWELSHOT_QUEUE__NAME", "jewelshot:edits")
        .env("JEWELSHOT_GATEWAY__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run the gateway");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("{core:apalis:queues:list}:jewelshot:edits"), "{err}");
}
