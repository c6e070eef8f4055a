//! husk's host side: the pod sandbox library ([`sandbox`]), the agent
//! client ([`agent_client`]), the `husk` operator CLI ([`cli`]) and the
//! containerd shim v2 ([`shim_v2`], binary `containerd-shim-husk-v2`).

pub mod agent_client;
pub mod cli;
pub mod pod_net;
pub mod sandbox;
pub mod shim_v2;
