//! husk's host side: the pod sandbox library ([`sandbox`]), the agent
//! client ([`agent_client`]), the `husk` operator CLI ([`cli`]), the
//! containerd shim v2 ([`shim_v2`], binary `containerd-shim-husk-v2`) and
//! its per-pod monitor endpoint ([`monitor`]).

pub mod agent_client;
pub mod cli;
pub mod monitor;
pub mod pod_net;
pub mod sandbox;
pub mod shim_v2;
