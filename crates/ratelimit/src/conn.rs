//! One Redis connection type for every crate: a single server (or a managed service's one
//! endpoint) through redis's self-reconnecting [`ConnectionManager`], or a **Redis Cluster**
//! through its cluster client, which follows `MOVED`/`ASK` and refreshes the slot map itself.
//!
//! Cluster mode puts every key of the system in **one hash slot**, [`CLUSTER_SLOT_KEY`]'s: each
//! Lua script and MULTI touches keys of several structures at once (the line, the limiter, the
//! queue's task records), and apalis-redis's worker registration writes the fixed key
//! `core:apalis:queues:list` from inside a script — Redis refuses a script whose keys span
//! slots. A queue named `{core:apalis:queues:list}:…` (and a limiter prefix derived from it)
//! satisfies this; [`check_cluster_key`] refuses anything else at start, with that advice.

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
    Cmd, Pipeline, RedisFuture, Value,
};

/// The key whose slot holds everything in cluster mode: apalis-redis's registry of queues, which
/// its scripts write without declaring it.
pub const CLUSTER_SLOT_KEY: &str = "core:apalis:queues:list";

/// The hash tag that puts a key in [`CLUSTER_SLOT_KEY`]'s slot.
pub const CLUSTER_TAG: &str = "{core:apalis:queues:list}";

/// A connection to a single Redis or to a Redis Cluster; cheap to clone, multiplexed, and it
/// reconnects by itself either way.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> Self {
        Self::Single(c)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(c: ClusterConnection) -> Self {
        Self::Cluster(c)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// In cluster mode, every key prefix (`what` names the setting, for the message) must hash to
/// [`CLUSTER_SLOT_KEY`]'s slot.
pub fn check_cluster_key(what: &str, prefix: &str) -> Result<(), String> {
    if Slot::for_key(prefix) == Slot::for_key(CLUSTER_SLOT_KEY) {
        return Ok(());
    }
    Err(format!(
        "{what} = {prefix:?} cannot run on a Redis Cluster: every key must share one hash slot \
         (apalis-redis's scripts write `{CLUSTER_SLOT_KEY}`); start it with the hash tag \
         {CLUSTER_TAG}, e.g. \"{CLUSTER_TAG}:jewelshot:edits\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_tagged_into_apalis_registry_slot_are_accepted_in_cluster_mode() {
        check_cluster_key("queue.name", "{core:apalis:queues:list}:jewelshot:edits").expect("tagged");
        check_cluster_key("prefix", "{core:apalis:queues:list}:edits:upstream").expect("derived");
        let err = check_cluster_key("queue.name", "jewelshot:edits").expect_err("untagged");
        assert!(err.contains("{core:apalis:queues:list}:jewelshot:edits"), "{err}");
        check_cluster_key("queue.name", "{jewelshot}:edits").expect_err("another slot");
    }
}
