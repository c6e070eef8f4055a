//! containerd's task v2 shim API for `containerd-shim-husk-v2`, generated
//! by build.rs (ttrpc-codegen, the same ttrpc 0.10 and protobuf 3.7 as the
//! agent's API, so one ttrpc runtime serves both).
//!
//! - [`shim`], [`shim_ttrpc`]: the `containerd.task.v2.Task` service
//!   containerd 1.6 calls (`create_task` serves a [`shim_ttrpc::Task`]).
//! - [`task`]: `containerd.v1.types` (`Status`, `ProcessInfo`); [`mount`]:
//!   `containerd.types.Mount`.
//! - [`events`], [`events_ttrpc`]: `containerd.services.events.ttrpc.v1`,
//!   how a shim forwards its events to containerd ([`event::Envelope`]).
//! - [`task_events`]: the `containerd.events.Task*` event messages.
//! - [`metrics`]: `io.containerd.cgroups.v2.Metrics`, the stats type
//!   containerd decodes for a cgroup v2 task.

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    unused_mut,
    nonstandard_style,
    dead_code
)]
mod generated {
    pub mod mount {
        include!(concat!(env!("OUT_DIR"), "/api/mount.rs"));
    }
    pub mod task {
        include!(concat!(env!("OUT_DIR"), "/api/task.rs"));
    }
    pub mod event {
        include!(concat!(env!("OUT_DIR"), "/api/event.rs"));
    }
    pub mod shim {
        include!(concat!(env!("OUT_DIR"), "/api/shim.rs"));
    }
    pub mod shim_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/api/shim_ttrpc.rs"));
    }
    pub mod events {
        include!(concat!(env!("OUT_DIR"), "/api/events.rs"));
    }
    pub mod events_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/api/events_ttrpc.rs"));
    }
    pub mod metrics {
        include!(concat!(env!("OUT_DIR"), "/api/metrics.rs"));
    }
    /// `events/task.proto` and the `mount.proto` it refers to.
    pub mod task_events {
        pub mod mount {
            include!(concat!(env!("OUT_DIR"), "/events/mount.rs"));
        }
        pub mod task {
            include!(concat!(env!("OUT_DIR"), "/events/task.rs"));
        }
    }
}

pub use generated::{event, events, events_ttrpc, metrics, mount, shim, shim_ttrpc, task};

/// The `containerd.events.Task*` messages.
pub mod task_events {
    pub use crate::generated::task_events::mount;
    pub use crate::generated::task_events::task::*;
}

/// How containerd names a protobuf message in an `Any` (`typeurl`): its
/// full name, with no `type.googleapis.com/` prefix.
pub fn type_url<M: protobuf::MessageFull>() -> String {
    M::descriptor().full_name().to_string()
}
