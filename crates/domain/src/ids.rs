//! Identifiers. ULIDs sort by creation time, so ids double as a stable tiebreak.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A ULID greater than the last one this process made: within one millisecond plain ULIDs are
/// random, so ids made in the same millisecond on two threads (two requests of one user) would
/// sort at random — and ids are the "newest first" order of lists and their cursors.
pub fn monotonic() -> Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    GENERATOR.lock().ok().and_then(|mut g| g.generate().ok()).unwrap_or_else(Ulid::generate)
}

macro_rules! ulid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A fresh id for now, greater than every id this process made before (see
            /// [`monotonic`]).
            pub fn generate() -> Self {
                Self(monotonic())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ulid::DecodeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ulid::from_string(s).map(Self)
            }
        }
    };
}

ulid_id!(
    /// A job; also the id of its queue task, so Redis and Postgres agree on names.
    JobId
);
ulid_id!(
    /// A user (tenant) of the API.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = JobId::generate();
        let back: JobId = id.to_string().parse().expect("parse own output");
        assert_eq!(id, back);
        assert!("not-a-ulid".parse::<JobId>().is_err());
    }

    #[test]
    fn ids_made_in_one_millisecond_still_sort_in_the_order_they_were_made() {
        let ids: Vec<_> = (0..2000).map(|_| JobId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "plain ULIDs are random within a millisecond");
        // Across threads too: an id made after another thread's is greater.
        let first = std::thread::spawn(JobId::generate).join().expect("thread");
        assert!(JobId::generate() > first);
    }
}
