//! How often the connector may collect. A collection that finds nothing new still costs Falcon
//! requests, and they come out of `crowdstrike.rate_limit_per_minute`, the tenant's budget that
//! the write-backs of real work (and other integrations on the same API client) need. So idle
//! collections may use at most [`IDLE_SHARE_PERCENT`] of it: a `general.time_span` shorter than
//! that allows is raised at load time, and [`super::warnings`] says so at every start.
//!
//! With the defaults (both data sources, 6,000 requests a minute) an idle collection is 2
//! requests and the shortest `time_span` is 1 s, so only a much smaller budget ever raises it.

use super::Config;

/// Falcon requests one collection makes per selected data source when nothing is new: one query
/// (alerts, or quarantined files) that comes back empty, so no entity is fetched. The OAuth2
/// token is kept between cycles and renewed about every 30 minutes, not per collection. The
/// integration test `pipeline::an_idle_collection_costs_one_falcon_query_per_source_and_nothing_at_vmray`
/// measures it on the simulator.
pub const IDLE_REQUESTS_PER_SOURCE: u64 = 1;

/// The share of `crowdstrike.rate_limit_per_minute`, in percent, idle collections may use.
pub const IDLE_SHARE_PERCENT: u64 = 10;

/// Falcon requests of one collection that finds nothing new, for these settings.
pub fn idle_collection_requests(config: &Config) -> u64 {
    let sources = config.crowdstrike.selected_data_sources.len() as u64;
    sources.max(1) * IDLE_REQUESTS_PER_SOURCE
}

/// The shortest `time_span`, in seconds, at which idle collections of `idle_requests` each stay
/// within [`IDLE_SHARE_PERCENT`] of `rate_limit_per_minute`:
///
/// `idle_requests × 60 / time_span ≤ rate_limit_per_minute × IDLE_SHARE_PERCENT / 100`,
/// so `time_span ≥ 6000 × idle_requests / (IDLE_SHARE_PERCENT × rate_limit_per_minute)`,
/// rounded up, and never below the key's own minimum of 1 s.
pub fn min_time_span(idle_requests: u64, rate_limit_per_minute: u32) -> u64 {
    let budget = IDLE_SHARE_PERCENT * u64::from(rate_limit_per_minute.max(1));
    (60 * 100 * idle_requests).div_ceil(budget).max(1)
}

/// The shortest `time_span` for these settings.
pub fn min_time_span_for(config: &Config) -> u64 {
    min_time_span(
        idle_collection_requests(config),
        config.crowdstrike.rate_limit_per_minute,
    )
}

/// Raises `general.time_span` to [`min_time_span_for`] when it is shorter, and records the
/// value it had, for the warning.
pub(super) fn raise_time_span(config: &mut Config) {
    let min = min_time_span_for(config);
    if config.general.time_span < min {
        config.general.time_span_raised_from = Some(config.general.time_span);
        config.general.time_span = min;
    }
}

/// The warning for a raised `time_span`: the key, the value given, the minimum and why.
pub(super) fn raised_warning(config: &Config) -> Option<String> {
    let given = config.general.time_span_raised_from?;
    let requests = idle_collection_requests(config);
    let rate = config.crowdstrike.rate_limit_per_minute;
    let min = config.general.time_span;
    Some(format!(
        "general.time_span = {given} is below the minimum of {min} s, so {min} s is used: a \
         collection that finds nothing new costs {requests} Falcon request(s) (one query per \
         selected data source), and idle collections may use at most {IDLE_SHARE_PERCENT} % of \
         crowdstrike.rate_limit_per_minute = {rate}; set time_span to {min} or more, or raise \
         rate_limit_per_minute if the tenant's API client really has that budget"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataSource;

    #[test]
    fn the_minimum_keeps_idle_collections_within_a_tenth_of_the_budget() {
        // 2 requests a collection at 60 a minute: 6 a minute allowed, so one every 20 s.
        assert_eq!(min_time_span(2, 60), 20);
        assert_eq!(min_time_span(1, 60), 10);
        // Rounded up: 2 requests at 7 a minute allow 0.7 a minute, one every 171.4 s.
        assert_eq!(min_time_span(2, 7), 172);
        assert_eq!(min_time_span(2, 1), 1200);
        // A budget this size never raises the key's own minimum.
        assert_eq!(min_time_span(2, 6000), 1);
        assert_eq!(min_time_span(2, 100_000), 1);
        // At the minimum, idle collections stay within the share; one second less, they do not.
        let within = |requests: u64, rate: u32, span: u64| {
            requests * 60 * 100 <= IDLE_SHARE_PERCENT * u64::from(rate) * span
        };
        for (requests, rate) in [(1, 1), (2, 7), (2, 60), (2, 599), (3, 1000)] {
            let min = min_time_span(requests, rate);
            assert!(within(requests, rate, min), "{requests} at {rate}: {min} s");
            assert!(
                min == 1 || !within(requests, rate, min - 1),
                "{requests} at {rate}: {} s would do",
                min - 1
            );
        }
    }

    #[test]
    fn an_idle_collection_is_one_request_per_selected_source() {
        let mut config = Config::default();
        assert_eq!(idle_collection_requests(&config), 2);
        config.crowdstrike.selected_data_sources = vec![DataSource::Detect];
        assert_eq!(idle_collection_requests(&config), 1);
    }

    #[test]
    fn a_short_time_span_is_raised_and_the_warning_names_key_value_minimum_and_reason() {
        let mut config = Config::default();
        config.general.time_span = 5;
        config.crowdstrike.rate_limit_per_minute = 60;
        raise_time_span(&mut config);
        assert_eq!(config.general.time_span, 20);
        assert_eq!(config.general.time_span_raised_from, Some(5));
        let warning = raised_warning(&config).unwrap();
        for part in [
            "general.time_span = 5",
            "minimum of 20 s",
            "2 Falcon request(s)",
            "10 %",
            "crowdstrike.rate_limit_per_minute = 60",
        ] {
            assert!(warning.contains(part), "{part}: {warning}");
        }
    }

    #[test]
    fn a_time_span_at_or_above_the_minimum_stands_without_a_warning() {
        for (span, rate) in [(20, 60), (60, 60), (1, 6000), (60, 6000)] {
            let mut config = Config::default();
            config.general.time_span = span;
            config.crowdstrike.rate_limit_per_minute = rate;
            raise_time_span(&mut config);
            assert_eq!(config.general.time_span, span, "{span} at {rate}");
            assert_eq!(raised_warning(&config), None);
        }
    }

    /// 2880 as "2,880", as the README writes numbers.
    fn thousands(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, d) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(d);
        }
        out
    }

    #[test]
    fn the_readme_states_the_measured_figure_and_the_rule() {
        let readme = include_str!("../../README.md");
        let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        let config = Config::default();
        let requests = idle_collection_requests(&config);
        let mut small_budget = Config::default();
        small_budget.crowdstrike.rate_limit_per_minute = 60;
        for claim in [
            format!("an idle collection is {requests} Falcon requests"),
            format!(
                "{requests} × 1,440 = {} requests a day, {requests} a minute",
                thousands(requests * 1440)
            ),
            format!("at most {IDLE_SHARE_PERCENT} % of `crowdstrike.rate_limit_per_minute`"),
            format!(
                "{} s with `rate_limit_per_minute = 60`",
                min_time_span_for(&small_budget)
            ),
            format!("{} s with the defaults", min_time_span_for(&config)),
        ] {
            assert!(readme.contains(&claim), "the README does not say: {claim}");
        }
    }

    #[test]
    fn the_default_time_span_is_far_above_the_minimum_of_the_default_budget() {
        let config = Config::default();
        // 60 s against a minimum of 1 s: idle collections use 2 of 6,000 requests a minute.
        assert_eq!(min_time_span_for(&config), 1);
        assert!(config.general.time_span >= 60 * min_time_span_for(&config));
    }
}
