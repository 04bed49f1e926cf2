//! Shared by the CLI's end-to-end tests: run `jewelshot` against a [`Stack`]'s database and queue.
#![allow(dead_code)]

use std::process::Command;

use jewelshot_testkit::Stack;

/// Run `jewelshot <args>` on the stack; whether it succeeded, and its stdout and stderr.
pub fn jewelshot(stack: &Stack, args: &[&str]) -> (bool, String) {
    jewelshot_with(stack, args, &[])
}

/// The same with more environment (`env` wins over the stack's).
pub fn jewelshot_with(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jewelshot"));
    if args.contains(&"migrate") {
        // Migrations go to the database itself, never through a transaction pooler (as in
        // production: their lock is a session's).
        cmd.env("JEWELSHOT_DATABASE__URL", &stack.db.direct_url).env("JEWELSHOT_DATABASE__POOLER", "none");
    } else {
        cmd.env("JEWELSHOT_DATABASE__URL", &stack.db.url);
    }
    let out = cmd
        .args(args)
        .env("JEWELSHOT_QUEUE__NAME", &stack.queue_name)
        .env("JEWELSHOT_QUEUE__REDIS_URL", stack.redis_url())
        .env("JEWELSHOT_QUEUE__CLUSTER", stack.cluster_mode.to_string())
        .envs(jewelshot_testkit::config_env("JEWELSHOT_SECRETS", &stack.db.secrets, &Default::default()).expect("env"))
        .envs(env.iter().copied())
        .output()
        .expect("run jewelshot");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
