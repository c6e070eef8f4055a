//! All host file work under a pod's directory: the layout of a pod VM's
//! directory, the container rootfs and volume mounts in it, and their
//! removal ([`PodTree`]); removing what a dead shim left
//! ([`remove_host_tree`]). Everything here works on directory descriptors
//! without following links (see [`sys`]); nothing the guest can write
//! decides what is mounted, unmounted or removed.

mod remove;
pub mod sys;
mod tree;

pub use remove::{remove_host_tree, RemoveError};
pub use tree::{HostFsError, PodTree, MOUNTS, SHARED};

#[cfg(test)]
mod tests;
