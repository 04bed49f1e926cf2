//! Job and step states, and the codes a failed job reports.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:tt),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable wire and database spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue(other.to_owned())),
                }
            }
        }
    };
}

/// A string that names no value of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{0}`")]
pub struct UnknownValue(pub String);

string_enum!(
    /// Where a job is in its life. `complete`, `failed` and `canceled` are final.
    JobStatus {
        Queued => "queued",
        Processing => "processing",
        Complete => "complete",
        Failed => "failed",
        Canceled => "canceled",
    }
);

impl JobStatus {
    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Canceled)
    }
}

string_enum!(
    /// Dispatch priority requested on submit.
    Priority {
        Normal => "normal",
        High => "high",
    }
);

string_enum!(
    /// The steps of an edit job, in the order they run.
    StepName {
        GenerateImage => "generate-image",
        SaveToGallery => "save-to-gallery",
        NotifyUser => "notify-user",
    }
);

string_enum!(
    /// Where one step is. A `complete` step is never run again.
    StepStatus {
        Pending => "pending",
        Running => "running",
        Complete => "complete",
        Failed => "failed",
    }
);

string_enum!(
    /// Where a job's webhook delivery is. `delivered` and `failed` are final (an operator may
    /// resend a failed one: `jewelshot webhooks resend`).
    DeliveryState {
        Pending => "pending",
        Sending => "sending",
        Delivered => "delivered",
        Failed => "failed",
    }
);

/// The codes a failed job reports in `error.code` live with every other code.
pub use crate::error_code;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in StepName::ALL {
            assert_eq!(s.as_str().parse::<StepName>(), Ok(*s));
        }
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(*s));
        }
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(serde_json::to_string(&StepName::SaveToGallery).expect("serialize"), "\"save-to-gallery\"");
    }

    #[test]
    fn final_states() {
        assert!(JobStatus::Complete.is_final());
        assert!(!JobStatus::Processing.is_final());
    }
}
