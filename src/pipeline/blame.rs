//! Whose failure is it: the sample's, or a service's?
//!
//! A failure that is not the sample's own (VMRay or Falcon down, a refused key or API client, a
//! rate limit, an answer nobody could read such as a proxy's HTML page, the connector's own disk
//! or state store) says nothing about the sample: it never counts towards giving the sample up,
//! and a cycle in which such failures stopped everything is not a completed cycle. A failure of
//! the sample's own (Falcon does not hold the file yet, its download does not check out, VMRay
//! has nothing usable for it) is retried until `give_up_after`; a permanent one (VMRay's analysis
//! failed, the file is over the instance's upload limit) is given up at once.
//!
//! Write-backs (the action journal) follow the same rule, with the entity (alert, quarantine
//! record, host, IOC value) in the sample's place: [`falcon`] classifies a call that failed as a
//! whole, [`entity`] one entity that an otherwise successful answer names as not changed.

use serde::Serialize;

use crate::falcon::FalconError;
use crate::vmray::VmrayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// An outage or misconfiguration that fails every sample alike.
    Service,
    /// The sample's own, and trying again may help (a late sensor upload).
    Sample,
    /// The sample's own, and trying again would not change it.
    Permanent,
}

impl Blame {
    /// Whether later cycles should try the sample again.
    pub fn retry(self) -> bool {
        self != Blame::Permanent
    }
}

/// `general.give_up_after` as a duration: how long a sample or an action may fail for reasons
/// of its own (or an analysis run) before it is given up.
pub fn give_up_bound(give_up_after: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(give_up_after).unwrap_or(i64::MAX))
}

/// A status that says the service, not the request, is in trouble.
fn service_status(status: u16) -> bool {
    status >= 500 || status == 408
}

pub fn vmray(error: &VmrayError) -> Blame {
    match error {
        VmrayError::Unauthorized
        | VmrayError::Forbidden { .. }
        | VmrayError::RateLimited
        | VmrayError::Transport(_)
        // One sample's malformed answer cannot be told from a wrong URL's HTML page for
        // everyone; the latter must never give samples up, so neither does the former.
        | VmrayError::Decode { .. }
        | VmrayError::SubmitUnconfirmed { .. }
        // The connector's own download folder.
        | VmrayError::SampleFile { .. }
        | VmrayError::Interrupted => Blame::Service,
        VmrayError::Api { status, .. } if service_status(*status) => Blame::Service,
        VmrayError::Api { .. } | VmrayError::NotFound { .. } => Blame::Sample,
        VmrayError::FileTooLarge { .. } => Blame::Permanent,
    }
}

pub fn falcon(error: &FalconError) -> Blame {
    match error {
        FalconError::Unauthorized
        | FalconError::TokenForbidden { .. }
        | FalconError::Forbidden { .. }
        | FalconError::RateLimited
        | FalconError::Transport(_)
        | FalconError::Decode { .. }
        | FalconError::Interrupted => Blame::Service,
        FalconError::Api { status, .. } if service_status(*status) => Blame::Service,
        // The download folder failing (full disk, permissions) is the connector's, not the
        // sample's.
        FalconError::DownloadDir { .. } => Blame::Service,
        FalconError::Api { .. } | FalconError::NotFound { .. } | FalconError::Sample { .. } => {
            Blame::Sample
        }
    }
}

/// One entity that Falcon's answer names as not changed, by the `code` of its error: one that
/// no longer exists (404) is gone for good; a server error, a rate limit or a refused token or
/// scope is the service's; any other refusal (a conflict, an entity Falcon cannot change yet) is
/// the entity's own and may pass, and so does one without a code.
pub fn entity(code: Option<u16>) -> Blame {
    match code {
        Some(404) => Blame::Permanent,
        Some(401 | 403 | 429) => Blame::Service,
        Some(status) if service_status(status) => Blame::Service,
        _ => Blame::Sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_refusals_are_the_services_and_a_sample_keeps_its_own() {
        assert_eq!(vmray(&VmrayError::Unauthorized), Blame::Service);
        assert_eq!(
            vmray(&VmrayError::Decode {
                what: "HTML".into()
            }),
            Blame::Service
        );
        assert_eq!(
            vmray(&VmrayError::Api {
                status: 503,
                message: String::new()
            }),
            Blame::Service
        );
        assert_eq!(
            vmray(&VmrayError::FileTooLarge { size: 2, limit: 1 }),
            Blame::Permanent
        );
        assert_eq!(falcon(&FalconError::RateLimited), Blame::Service);
        let sha = "a".repeat(64).parse().unwrap();
        let own = FalconError::Sample {
            sha256: sha,
            reason: "the ZIP archive holds 2 entries".into(),
        };
        assert_eq!(falcon(&own), Blame::Sample);
        let sha = "a".repeat(64).parse().unwrap();
        let disk = FalconError::DownloadDir {
            sha256: sha,
            reason: "cannot store the sample: No space left on device".into(),
        };
        assert_eq!(falcon(&disk), Blame::Service);
    }

    #[test]
    fn an_entity_that_is_gone_is_permanent_a_refusal_its_own_and_an_outage_the_services() {
        assert_eq!(entity(Some(404)), Blame::Permanent);
        assert_eq!(entity(Some(409)), Blame::Sample);
        assert_eq!(entity(None), Blame::Sample);
        for status in [500, 503, 429, 401, 403, 408] {
            assert_eq!(entity(Some(status)), Blame::Service, "{status}");
        }
        assert_eq!(
            falcon(&FalconError::Api {
                status: 503,
                messages: Vec::new(),
                trace_id: None
            }),
            Blame::Service
        );
    }
}
