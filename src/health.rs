//! Is the daemon doing its job? Healthy while the last cycle completed within the grace:
//! twice `time_span`, but never less than [`MIN_GRACE`] (10 minutes); before the first cycle
//! has completed it is not healthy, however young the process: "up" is not "working", and a
//! probe must not report work that never happened.
//!
//! The floor is there for short `time_span`s (the default is a minute): twice that would turn
//! `/healthz` red, and stop the watchdog, whenever one cycle takes longer than two minutes,
//! which a busy window of thousands of hashes does without anything being wrong.
//!
//! `/healthz` answers from it. The systemd watchdog allows a young process its first cycle (a
//! watchdog that killed every daemon whose first cycle outlasts `WatchdogSec` would never let
//! it finish one): it pings while the last completed cycle, or else the start, is within the
//! grace. Nothing here depends on a cycle's internals: the loop reports completions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The shortest grace, whatever `time_span` is.
pub const MIN_GRACE: Duration = Duration::from_secs(600);

/// How long after the last completed cycle (or the start) the daemon still counts as working:
/// `max(2 × time_span, MIN_GRACE)`.
pub fn grace(time_span: Duration) -> Duration {
    time_span.saturating_mul(2).max(MIN_GRACE)
}

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// The last completed cycle; `None` until one has.
    last_completed: Mutex<Option<Instant>>,
    grace: Duration,
}

impl Health {
    pub fn new(time_span: Duration) -> Self {
        Self::with_grace(grace(time_span))
    }

    /// A grace of its own, below the floor too (tests that cannot wait ten minutes).
    fn with_grace(grace: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_completed: Mutex::new(None),
            grace,
        }
    }

    /// How long after the last completed cycle (or the start) this counts as working.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn cycle_completed(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// A cycle completed, within the grace.
    pub fn is_healthy(&self) -> bool {
        self.since_completed().is_some_and(|age| age <= self.grace)
    }

    /// For the systemd watchdog: healthy, or still within the grace of its start.
    pub fn is_alive(&self) -> bool {
        self.age() <= self.grace
    }

    /// Time since the last completed cycle, `None` before the first.
    pub fn since_completed(&self) -> Option<Duration> {
        self.lock().map(|at| at.elapsed())
    }

    /// Time since the last completed cycle, or since the start before the first.
    pub fn age(&self) -> Duration {
        self.since_completed()
            .unwrap_or_else(|| self.started.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_completed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where systemd listens, from `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
#[derive(Debug, Clone)]
pub struct SystemdNotify {
    socket: std::ffi::OsString,
    /// How often to ping: a third of the unit's `WatchdogSec`, when it has one.
    ping_every: Option<Duration>,
}

impl SystemdNotify {
    /// `None` outside systemd.
    pub fn from_env() -> Option<Self> {
        Self::new(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok(),
        )
    }

    fn new(socket: Option<std::ffi::OsString>, watchdog_usec: Option<String>) -> Option<Self> {
        Some(SystemdNotify {
            socket: socket.filter(|s| !s.is_empty())?,
            ping_every: watchdog_usec
                .and_then(|usec| usec.parse::<u64>().ok())
                .filter(|usec| *usec > 0)
                .map(|usec| Duration::from_micros(usec) / 3),
        })
    }
}

impl SystemdNotify {
    /// `READY=1`: the process is up (a `Type=notify` unit's start is complete).
    pub fn ready(&self) {
        notify(&self.socket, "READY=1");
    }

    /// `STOPPING=1`: the process is ending, whether a signal asked for it or the one cycle of
    /// `runtime_mode = "once"` is done.
    pub fn stopping(&self) {
        notify(&self.socket, "STOPPING=1");
    }
}

/// When the unit sets `WatchdogSec`, pings systemd while healthy, until shutdown. `READY=1`
/// and `STOPPING=1` are the caller's, around the whole run, in both runtime modes.
pub async fn systemd_watchdog(
    systemd: SystemdNotify,
    health: std::sync::Arc<Health>,
    shutdown: CancellationToken,
) {
    let Some(interval) = systemd.ping_every else {
        return;
    };
    loop {
        if health.is_alive() {
            notify(&systemd.socket, "WATCHDOG=1");
        } else {
            tracing::error!(
                "no cycle completed for {} s: not pinging the systemd watchdog",
                health.age().as_secs()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(unix)]
fn notify(socket: &std::ffi::OsStr, message: &str) {
    use std::os::unix::net::UnixDatagram;
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(message.as_bytes(), socket));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({message}): {e}");
    }
}

#[cfg(not(unix))]
fn notify(_socket: &std::ffi::OsStr, _message: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_is_twice_the_time_span_but_never_under_ten_minutes() {
        let secs = |s| Duration::from_secs(s);
        // The default minute: a long cycle must not flap /healthz or stop the watchdog.
        assert_eq!(grace(secs(60)), secs(600));
        assert_eq!(grace(secs(1)), secs(600));
        assert_eq!(grace(secs(300)), secs(600));
        assert_eq!(grace(secs(301)), secs(602));
        // The original's 3 hours keep their 6.
        assert_eq!(grace(secs(10_800)), secs(21_600));
        assert_eq!(grace(Duration::MAX), Duration::MAX, "saturates");
        assert_eq!(Health::new(secs(60)).grace(), secs(600));
        assert_eq!(Health::new(secs(3600)).grace(), secs(7200));
    }

    #[test]
    fn healthy_within_the_grace_only() {
        let health = Health::with_grace(Duration::from_millis(40));
        health.cycle_completed();
        assert!(health.is_healthy());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!health.is_healthy());
        health.cycle_completed();
        assert!(health.is_healthy());
    }

    #[test]
    fn not_healthy_before_the_first_cycle_completes_but_the_watchdog_waits_for_it() {
        let health = Health::with_grace(Duration::from_millis(40));
        assert!(!health.is_healthy(), "no cycle has completed yet");
        assert_eq!(health.since_completed(), None);
        assert!(health.is_alive(), "a young process gets its first cycle");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!health.is_alive());
        health.cycle_completed();
        assert!(health.is_healthy() && health.is_alive());
    }

    #[cfg(unix)]
    // Multi-threaded: the test reads the socket with blocking calls while the watchdog runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watchdog_pings_while_healthy_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let systemd =
            SystemdNotify::new(Some(path.clone().into_os_string()), Some("30000".into())).unwrap();
        let health = std::sync::Arc::new(Health::new(Duration::from_secs(60)));
        let shutdown = CancellationToken::new();
        systemd.ready();
        let task = tokio::spawn(systemd_watchdog(systemd.clone(), health, shutdown.clone()));
        let mut buf = [0u8; 64];
        let mut next = || {
            let n = listener.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(next(), "READY=1");
        assert_eq!(next(), "WATCHDOG=1");
        assert_eq!(next(), "WATCHDOG=1");
        shutdown.cancel();
        task.await.unwrap();
        systemd.stopping();
        let mut last = next();
        while last == "WATCHDOG=1" {
            last = next();
        }
        assert_eq!(last, "STOPPING=1");
    }

    #[test]
    fn outside_systemd_there_is_nothing_to_notify() {
        assert!(SystemdNotify::new(None, Some("30000".into())).is_none());
        let no_watchdog = SystemdNotify::new(Some("/run/x".into()), None).unwrap();
        assert_eq!(no_watchdog.ping_every, None);
    }
}
