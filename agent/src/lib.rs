//! husk-agent: PID 1 of a husk guest, as a library.
//!
//! What runs (and is unit-tested) on any Linux host lives here: the ttrpc
//! `Agent` service ([`service`]) over injectable guest facts ([`facts`]),
//! identity changes ([`identity`]) and mounts ([`mount`]), command execution
//! ([`exec`]) with its child reaping ([`reaper`]), the ttrpc server
//! ([`rpc`]), containers' stdio streams ([`stdio`]), the console + vsock
//! logger ([`log`]), the vsock connect helper ([`vsock`]) and the kernel
//! command line ([`cmdline`]); the accounting of a container's create and
//! start ([`accounting`]). `main.rs` is the PID 1 binary.

pub mod accounting;
pub mod cmdline;
pub mod container;
pub mod echo;
pub mod exec;
pub mod facts;
pub mod guest_env;
pub mod identity;
pub mod log;
pub mod mount;
pub mod network;
pub mod pause;
pub mod reaper;
pub mod rpc;
pub mod service;
pub mod stdio;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod vsock;

/// The line the VMM waits for: printed once the ttrpc server listens.
pub const READY_MARKER: &str = "husk-agent ready";

/// This agent's version (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
