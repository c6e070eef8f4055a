//! Task events to containerd: `containerd.services.events.ttrpc.v1.Events/
//! Forward` on `TTRPC_ADDRESS`, one envelope per event, in the order they
//! happened (one sender thread), each retried a few times. The queue in
//! front of the sender is bounded ([`EventQueue`]): the guest can cause
//! OOM events, and containerd may be away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use husk_shim_protos::event::Envelope;
use husk_shim_protos::events::ForwardRequest;
use husk_shim_protos::events_ttrpc::EventsClient;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageFull;

/// containerd's event topics.
pub mod topic {
    pub const CREATE: &str = "/tasks/create";
    pub const START: &str = "/tasks/start";
    pub const EXIT: &str = "/tasks/exit";
    pub const DELETE: &str = "/tasks/delete";
    pub const EXEC_ADDED: &str = "/tasks/exec-added";
    pub const EXEC_STARTED: &str = "/tasks/exec-started";
    pub const PAUSED: &str = "/tasks/paused";
    pub const RESUMED: &str = "/tasks/resumed";
    pub const OOM: &str = "/tasks/oom";
}

const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 5;

/// Where the task service's events go.
pub trait Publisher: Send + Sync {
    /// Sends `event` (an `Any` of a `containerd.events.Task*`) on `topic`.
    fn publish(&self, topic: &'static str, event: Any);
}

/// Packs a message the way containerd's `typeurl` names it.
pub fn to_any<M: MessageFull>(m: &M) -> Any {
    Any {
        type_url: husk_shim_protos::type_url::<M>(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// The most events waiting for the sender: containerd may be away (a
/// restart) while processes keep ending. Beyond it an OOM event is dropped
/// first (see [`EventQueue::push`]).
pub const QUEUE_MAX: usize = 1024;

/// What waits for the sender thread.
struct Queued {
    topic: &'static str,
    event: Any,
    at: SystemTime,
}

/// The sender's queue: bounded ([`QUEUE_MAX`]), an OOM event for a
/// container already queued is coalesced into that one, and when full
/// the oldest OOM event gives its place to a lifecycle event (those come
/// from containerd's own requests and the processes' ends, which the
/// guest does not choose); with no OOM event to drop, the new event is
/// dropped. Drops are counted and warned about (at most every
/// [`DROP_WARN_EVERY`]).
pub struct EventQueue {
    items: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
    warn: Throttle,
    capacity: usize,
}

/// How often a full queue is reported.
pub const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

impl EventQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            warn: Throttle::new(DROP_WARN_EVERY),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`; false when it was dropped (or coalesced).
    pub fn push(&self, topic: &'static str, event: Any) -> bool {
        let mut q = self.lock();
        if topic == topic::OOM && q.iter().any(|e| e.topic == topic::OOM && e.event == event) {
            // The same container's OOM is already on its way.
            return false;
        }
        if q.len() >= self.capacity {
            let oldest_oom = q.iter().position(|e| e.topic == topic::OOM);
            match oldest_oom {
                Some(i) if topic != topic::OOM => {
                    q.remove(i);
                    self.count_drop(topic::OOM);
                }
                _ => {
                    drop(q);
                    self.count_drop(topic);
                    return false;
                }
            }
        }
        q.push_back(Queued {
            topic,
            event,
            at: SystemTime::now(),
        });
        drop(q);
        self.ready.notify_one();
        true
    }

    fn count_drop(&self, topic: &'static str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.warn.ready() {
            tracing::warn!(
                topic,
                dropped_total = total,
                suppressed,
                "event queue full (containerd is not taking events); event dropped"
            );
        }
    }

    /// The next event, waiting for one; None once closed and empty.
    fn pop(&self) -> Option<Queued> {
        let mut q = self.lock();
        loop {
            if let Some(e) = q.pop_front() {
                return Some(e);
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Lets a repeated log line out at most once per period.
pub struct Throttle {
    every: Duration,
    /// When one last went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Some(how many were held back since the last one) when a line may
    /// go out now; None: hold this one back.
    pub fn ready(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(t) if now.duration_since(t) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut s.1);
                s.0 = Some(now);
                Some(held)
            }
        }
    }
}

/// Forwards events to containerd from a thread of its own, through an
/// [`EventQueue`].
pub struct RemotePublisher {
    queue: Arc<EventQueue>,
}

impl RemotePublisher {
    /// Events for namespace `namespace`, to the ttrpc socket `address`
    /// (`TTRPC_ADDRESS`, a path or `unix://` path).
    pub fn new(address: String, namespace: String) -> std::io::Result<Self> {
        let queue = Arc::new(EventQueue::new(QUEUE_MAX));
        let q = queue.clone();
        std::thread::Builder::new()
            .name("husk-events".into())
            .spawn(move || sender(&address, &namespace, &q))?;
        Ok(Self { queue })
    }

    /// Its queue (tests, diagnostics).
    pub fn queue(&self) -> &EventQueue {
        &self.queue
    }
}

impl Drop for RemotePublisher {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Publisher for RemotePublisher {
    fn publish(&self, topic: &'static str, event: Any) {
        self.queue.push(topic, event);
    }
}

fn sender(address: &str, namespace: &str, queue: &EventQueue) {
    let addr = if address.starts_with("unix://") {
        address.to_owned()
    } else {
        format!("unix://{address}")
    };
    let mut client: Option<EventsClient> = None;
    while let Some(Queued { topic, event, at }) = queue.pop() {
        let req = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(timestamp(at)).into(),
                namespace: namespace.to_owned(),
                topic: topic.to_owned(),
                event: Some(event).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let mut sent = false;
        for attempt in 0..ATTEMPTS {
            if client.is_none() {
                match ttrpc::Client::connect(&addr) {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => {
                        tracing::debug!(address = %addr, error = %e, "connecting to containerd's event service");
                    }
                }
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
                match c.forward(ctx, &req) {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(topic, error = %e, "forwarding an event");
                        client = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
        }
        if sent {
            tracing::debug!(topic, "event forwarded");
        } else {
            tracing::warn!(topic, address = %addr, "event not delivered to containerd");
        }
    }
}

/// Collects events (tests, and a shim with no `TTRPC_ADDRESS`): the last
/// [`QUEUE_MAX`] of them.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<(&'static str, Any)>>,
}

impl Publisher for Recorder {
    fn publish(&self, topic: &'static str, event: Any) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= QUEUE_MAX {
            events.remove(0);
        }
        events.push((topic, event));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use husk_shim_protos::task_events::{TaskExit, TaskOOM};

    fn oom(id: &str) -> Any {
        to_any(&TaskOOM {
            container_id: id.to_owned(),
            ..Default::default()
        })
    }

    fn exit(id: &str) -> Any {
        to_any(&TaskExit {
            container_id: id.to_owned(),
            id: id.to_owned(),
            ..Default::default()
        })
    }

    /// A flood never grows the queue past its capacity; one container's
    /// OOMs coalesce; lifecycle events push OOM events out, never the
    /// other way round; drops are counted.
    #[test]
    fn queue_is_bounded_and_keeps_lifecycle_events() {
        let q = EventQueue::new(8);
        assert!(q.push(topic::OOM, oom("c1")));
        assert!(!q.push(topic::OOM, oom("c1")), "coalesced");
        assert_eq!(q.len(), 1);
        for i in 0..10_000 {
            q.push(topic::OOM, oom(&format!("c{i}")));
            assert!(q.len() <= q.capacity());
        }
        assert_eq!(q.len(), 8);
        let dropped = q.dropped();
        assert!(dropped >= 10_000 - 8, "{dropped}");
        for i in 0..8 {
            assert!(
                q.push(topic::EXIT, exit(&format!("e{i}"))),
                "exit {i} queued"
            );
        }
        assert_eq!(q.len(), 8);
        // Full of lifecycle events: a new one is dropped, not an old one.
        assert!(!q.push(topic::EXIT, exit("late")));
        assert!(!q.push(topic::OOM, oom("late")));
        let topics: Vec<&str> = std::iter::from_fn(|| {
            if q.is_empty() {
                None
            } else {
                q.pop().map(|e| e.topic)
            }
        })
        .collect();
        assert_eq!(topics, [topic::EXIT; 8]);
    }

    /// With containerd unreachable the sender is stuck retrying, and the
    /// publisher's queue stays at its bound however many OOM events come.
    #[test]
    fn remote_publisher_queue_stays_bounded() {
        let p = RemotePublisher::new(
            "/nonexistent/husk-events-test.sock".into(),
            "default".into(),
        )
        .unwrap();
        for i in 0..(QUEUE_MAX * 4) {
            p.publish(topic::OOM, oom(&format!("c{i}")));
        }
        assert!(p.queue().len() <= p.queue().capacity());
        assert_eq!(p.queue().capacity(), QUEUE_MAX);
        assert!(p.queue().dropped() >= (QUEUE_MAX * 3) as u64 - 1);
    }

    #[test]
    fn throttle_lets_one_out_per_period() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.ready(), Some(2));
    }
}
