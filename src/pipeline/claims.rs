//! Who is working on a hash right now: the collection clock or the waiting clock, never both.
//!
//! In the daemon the two clocks run side by side. A hash in flight may show up in new evidence
//! while the waiting clock is acting on its finished analysis; if both acted, the verdict would
//! be planned from two copies of the evidence and the row written from two places. A claim
//! makes each hash's work one at a time: the collection waits for the hash (its new evidence
//! must not be dropped), the waiting clock skips a claimed hash and polls it next time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::model::Sha256;

#[derive(Debug, Default)]
pub(super) struct Claims {
    held: Mutex<HashSet<Sha256>>,
    released: Notify,
}

/// The hash is this task's until the claim is dropped.
#[derive(Debug)]
pub(super) struct Claim {
    claims: Arc<Claims>,
    sha256: Sha256,
}

impl Claims {
    /// Waits until nobody else works on `sha256`, then claims it.
    pub(super) async fn claim(self: &Arc<Self>, sha256: &Sha256) -> Claim {
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(claim) = self.try_claim(sha256) {
                return claim;
            }
            released.await;
        }
    }

    /// Claims `sha256` unless somebody works on it.
    pub(super) fn try_claim(self: &Arc<Self>, sha256: &Sha256) -> Option<Claim> {
        let fresh = self.lock().insert(sha256.clone());
        fresh.then(|| Claim {
            claims: self.clone(),
            sha256: sha256.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Sha256>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.lock().remove(&self.sha256);
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sha(c: char) -> Sha256 {
        c.to_string().repeat(64).parse().unwrap()
    }

    #[test]
    fn a_claimed_hash_cannot_be_claimed_again_until_released() {
        let claims = Arc::new(Claims::default());
        let first = claims.try_claim(&sha('a')).expect("free");
        assert!(claims.try_claim(&sha('a')).is_none());
        assert!(
            claims.try_claim(&sha('b')).is_some(),
            "other hashes are free"
        );
        drop(first);
        assert!(claims.try_claim(&sha('a')).is_some());
    }

    #[tokio::test]
    async fn a_waiting_claim_gets_the_hash_when_it_is_released() {
        let claims = Arc::new(Claims::default());
        let held = claims.try_claim(&sha('a')).unwrap();
        let waiter = tokio::spawn({
            let claims = claims.clone();
            async move { claims.claim(&sha('a')).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "it waits while the hash is held");
        drop(held);
        let claim = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released claims wake the waiter")
            .unwrap();
        assert!(
            claims.try_claim(&sha('a')).is_none(),
            "{claim:?} holds it now"
        );
    }
}
