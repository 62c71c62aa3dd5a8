//! The live part of `check`: a token, then one cheap read per API scope, so a missing scope is
//! named at start instead of surfacing as a 403 in the middle of a cycle.

use std::fmt;

use super::{Call, FalconClient, FalconError, Scope, ScopeStatus};

/// A hash no sample has: the sample probe expects 404, which proves read access.
const ZERO_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Scope {
    /// The scope as the Falcon console's API client page names it.
    pub fn console_name(self) -> &'static str {
        match self {
            Scope::Alerts => "Alerts: Read and Write",
            Scope::Quarantine => "Quarantined Files: Read and Write",
            Scope::SampleUploads => "Sample uploads: Read",
            Scope::IocManagement => "IOC Management: Read and Write",
            Scope::Hosts => "Hosts: Read and Write",
            Scope::Cases => "Cases: Read and Write",
            Scope::OnDemandScans => "On-demand scans (ODS): Read and Write",
        }
    }

    fn probe(self) -> Call {
        match self {
            Scope::Alerts => {
                Call::get("/alerts/queries/alerts/v2", "query alerts", self).query("limit", 1)
            }
            Scope::Quarantine => Call::get(
                "/quarantine/queries/quarantined-files/v1",
                "query quarantined files",
                self,
            )
            .query("limit", 1),
            Scope::SampleUploads => {
                let mut call = Call::get("/samples/entities/samples/v3", "get sample", self)
                    .query("ids", ZERO_SHA256)
                    .query("password_protected", "true");
                call.octet_stream = true;
                call
            }
            Scope::IocManagement => {
                Call::get("/iocs/queries/indicators/v1", "search IOCs", self).query("limit", 1)
            }
            Scope::Hosts => {
                Call::get("/devices/queries/devices/v1", "query hosts", self).query("limit", 1)
            }
            Scope::Cases => {
                Call::get("/cases/queries/cases/v1", "query cases", self).query("limit", 1)
            }
            Scope::OnDemandScans => {
                Call::get("/ods/queries/scans/v1", "query on-demand scans", self).query("limit", 1)
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.console_name())
    }
}

impl FalconClient {
    /// A token, then one cheap read per scope.
    pub async fn check_scopes(&self, scopes: &[Scope]) -> Vec<(Scope, ScopeStatus)> {
        if let Err(e) = self.check_token().await {
            let status = ScopeStatus::Failing(e.to_string());
            return scopes.iter().map(|s| (*s, status.clone())).collect();
        }
        let mut results = Vec::with_capacity(scopes.len());
        for &scope in scopes {
            results.push((scope, self.check_scope(scope).await));
        }
        results
    }

    /// Whether Falcon issues a token for these credentials (the first thing `check` proves).
    pub async fn check_token(&self) -> Result<(), FalconError> {
        self.token().await.map(|_| ())
    }

    /// One cheap read that needs `scope`.
    pub async fn check_scope(&self, scope: Scope) -> ScopeStatus {
        let expect_404 = scope == Scope::SampleUploads;
        match self.send_raw(scope.probe()).await {
            Ok(_) => ScopeStatus::Ok,
            Err(FalconError::NotFound { .. }) if expect_404 => ScopeStatus::Ok,
            Err(FalconError::Forbidden { .. }) => ScopeStatus::Missing,
            Err(e) => ScopeStatus::Failing(e.to_string()),
        }
    }
}
