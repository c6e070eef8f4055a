//! Task events to containerd: `containerd.services.events.ttrpc.v1.Events/
//! Forward` on `TTRPC_ADDRESS`, one envelope per event, in the order they
//! happened (one sender thread), each retried a few times.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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

/// Forwards events to containerd from a thread of its own.
pub struct RemotePublisher {
    tx: Mutex<mpsc::Sender<(&'static str, Any, SystemTime)>>,
}

impl RemotePublisher {
    /// Events for namespace `namespace`, to the ttrpc socket `address`
    /// (`TTRPC_ADDRESS`, a path or `unix://` path).
    pub fn new(address: String, namespace: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(&'static str, Any, SystemTime)>();
        std::thread::Builder::new()
            .name("husk-events".into())
            .spawn(move || sender(&address, &namespace, rx))?;
        Ok(Self { tx: Mutex::new(tx) })
    }
}

impl Publisher for RemotePublisher {
    fn publish(&self, topic: &'static str, event: Any) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send((topic, event, SystemTime::now())).is_err() {
            tracing::warn!(topic, "event sender gone; event dropped");
        }
    }
}

fn sender(address: &str, namespace: &str, rx: mpsc::Receiver<(&'static str, Any, SystemTime)>) {
    let addr = if address.starts_with("unix://") {
        address.to_owned()
    } else {
        format!("unix://{address}")
    };
    let mut client: Option<EventsClient> = None;
    for (topic, event, at) in rx {
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

/// Collects events (tests, and a shim with no `TTRPC_ADDRESS`).
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<(&'static str, Any)>>,
}

impl Publisher for Recorder {
    fn publish(&self, topic: &'static str, event: Any) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic, event));
    }
}
