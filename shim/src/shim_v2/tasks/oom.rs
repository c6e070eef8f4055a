//! The pod's OOM events, from the guest to containerd. The guest is not
//! trusted with them: an event is published only for a container id that
//! is a task of this shim (a guest that names another pod's container, or
//! sends megabytes of id, publishes nothing), at most once per container
//! per [`PER_CONTAINER`], and the long poll is spaced out and backs off
//! when the guest answers early, sends junk, or fails ([`Pacer`]), so a
//! hostile agent cannot spin the pump.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::error::TaskError;
use super::super::events::Throttle;
use super::super::guest::ContainerApi;
use crate::agent_client::stdio::is_valid_id;
use crate::agent_client::ContainerEvent;

/// How long one WaitEvent call waits in the guest for an event (a long
/// poll: an idle pod's guest is not woken for nothing).
pub const OOM_POLL: Duration = Duration::from_secs(60);
/// At most one OOM event per container in this long.
pub const PER_CONTAINER: Duration = Duration::from_secs(1);
/// The least time between two calls after an event was published.
pub const EVENT_GAP: Duration = Duration::from_millis(100);
/// The first pause after an early, rejected or failed call; doubled per
/// further one, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often rejected events are reported.
const REJECT_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the pump needs from the task service.
pub(super) trait OomHost {
    /// Whether the VM the pump serves is still the pod's.
    fn current(&self) -> bool;
    /// A connection of its own to the VM's agent.
    fn connect(&self) -> Result<Box<dyn ContainerApi>, TaskError>;
    /// Whether `id` is a task of this shim.
    fn is_task(&self, id: &str) -> bool;
    /// Publishes TaskOOM for task `id`.
    fn publish_oom(&self, id: &str);
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Publish,
    /// The container's OOM was published less than [`PER_CONTAINER`] ago.
    Coalesced,
    /// A well-formed id that is no task of this shim.
    Unknown,
    /// Not an id at all (size, characters).
    Invalid,
}

/// Decides per event (see the module's doc).
pub(super) struct OomFilter {
    last: HashMap<String, Instant>,
    warn: Throttle,
}

impl Default for OomFilter {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            warn: Throttle::new(REJECT_WARN_EVERY),
        }
    }
}

impl OomFilter {
    pub fn admit(&mut self, id: &str, is_task: impl Fn(&str) -> bool, now: Instant) -> Verdict {
        // Checked first: nothing of an id that is none is logged or kept.
        if !is_valid_id(id) {
            if let Some(suppressed) = self.warn.ready() {
                tracing::warn!(
                    id_bytes = id.len(),
                    suppressed,
                    "the guest sent an OOM event with an invalid container id; dropped"
                );
            }
            return Verdict::Invalid;
        }
        if !is_task(id) {
            if let Some(suppressed) = self.warn.ready() {
                tracing::warn!(
                    container = id,
                    suppressed,
                    "the guest sent an OOM event for no task of this pod; dropped"
                );
            }
            return Verdict::Unknown;
        }
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < PER_CONTAINER);
        if self.last.contains_key(id) {
            return Verdict::Coalesced;
        }
        self.last.insert(id.to_owned(), now);
        Verdict::Publish
    }
}

/// When to call again.
pub(super) struct Pacer {
    backoff: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            backoff: BACKOFF_FIRST,
        }
    }
}

impl Pacer {
    /// A call that brought news: the next one soon, the back-off reset.
    pub fn good(&mut self) -> Duration {
        self.backoff = BACKOFF_FIRST;
        EVENT_GAP
    }

    /// A call that brought nothing worth it: a pause, longer each time.
    pub fn bad(&mut self) -> Duration {
        let now = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        now
    }

    /// A long poll that ran its course: call again at once.
    pub fn idle(&mut self) -> Duration {
        self.backoff = BACKOFF_FIRST;
        Duration::ZERO
    }
}

/// Takes OOM events from the agent until `host` says its VM is no
/// longer the pod's; a failed connection is made again (backing off).
pub(super) fn pump(host: &dyn OomHost) {
    let mut filter = OomFilter::default();
    let mut pacer = Pacer::default();
    let mut conn: Option<Box<dyn ContainerApi>> = None;
    while host.current() {
        let api = match conn.take() {
            Some(a) => a,
            None => match host.connect() {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "connecting for container events");
                    sleep_while(pacer.bad(), || host.current());
                    continue;
                }
            },
        };
        let asked = Instant::now();
        let pause = match api.wait_event(OOM_POLL) {
            Ok(Some(ContainerEvent::Oom { container_id })) => {
                match filter.admit(&container_id, |id| host.is_task(id), Instant::now()) {
                    Verdict::Publish => {
                        tracing::info!(container = %container_id, "OOM kill");
                        host.publish_oom(&container_id);
                        pacer.good()
                    }
                    Verdict::Coalesced | Verdict::Unknown | Verdict::Invalid => pacer.bad(),
                }
            }
            // The guest cut the long poll short: not its to decide.
            Ok(None) if asked.elapsed() < OOM_POLL / 2 => pacer.bad(),
            Ok(None) => pacer.idle(),
            Err(e) => {
                tracing::debug!(error = %e, "waiting for container events");
                sleep_while(pacer.bad(), || host.current());
                // A new connection next time.
                continue;
            }
        };
        conn = Some(api);
        sleep_while(pause, || host.current());
    }
}

/// Sleeps `d`, in slices, while `go_on` holds.
pub(super) fn sleep_while(d: Duration, go_on: impl Fn() -> bool) {
    const SLICE: Duration = Duration::from_millis(250);
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !go_on() {
            return;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_publishes_known_ids_once_per_second() {
        let mut f = OomFilter::default();
        let known = |id: &str| id == "c1" || id == "c2";
        let t0 = Instant::now();
        assert_eq!(f.admit("c1", known, t0), Verdict::Publish);
        assert_eq!(
            f.admit("c1", known, t0 + Duration::from_millis(500)),
            Verdict::Coalesced
        );
        assert_eq!(
            f.admit("c2", known, t0 + Duration::from_millis(500)),
            Verdict::Publish
        );
        assert_eq!(
            f.admit("c1", known, t0 + Duration::from_millis(1001)),
            Verdict::Publish
        );
        assert_eq!(f.admit("other-pod", known, t0), Verdict::Unknown);
        assert_eq!(f.admit(&"x".repeat(1 << 20), known, t0), Verdict::Invalid);
        assert_eq!(f.admit("c1\n", known, t0), Verdict::Invalid);
        assert_eq!(f.admit("", known, t0), Verdict::Invalid);
        assert!(f.last.len() <= 2);
    }

    #[test]
    fn pacer_backs_off_and_resets() {
        let mut p = Pacer::default();
        assert_eq!(p.bad(), BACKOFF_FIRST);
        assert_eq!(p.bad(), BACKOFF_FIRST * 2);
        for _ in 0..20 {
            p.bad();
        }
        assert_eq!(p.bad(), BACKOFF_MAX);
        assert_eq!(p.good(), EVENT_GAP);
        assert_eq!(p.bad(), BACKOFF_FIRST);
        assert_eq!(p.idle(), Duration::ZERO);
    }
}
