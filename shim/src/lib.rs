//! husk's host side: the `husk` operator CLI (the containerd shim v2 binary
//! joins it in the shim wave).

pub mod agent_client;
pub mod cli;
pub mod sandbox;
