//! The bundle's spec, made usable inside the pod's VM.
//!
//! containerd writes `config.json` for a runc on the host; two kinds of
//! entries name host objects the guest cannot see:
//!
//! - **Bind mounts** (`type: bind`, or a `bind`/`rbind` option): hostPath,
//!   emptyDir, configmap/secret directories, `/etc/hosts`, `/etc/hostname`,
//!   `/etc/resolv.conf`, the termination log, `ctr run --mount`. Each one's
//!   source is bind-mounted on the host at `<cid>/mounts/<i>` of the pod
//!   VM's container tree (`i` = its index in `mounts`; read-only there too,
//!   recursively, when the spec says `ro`) and its `source` rewritten to the guest's view of that path,
//!   `/run/husk/pod/<cid>/mounts/<i>`, which the agent then binds into the
//!   container with the spec's options. One host mount per container and
//!   volume: two containers of a pod using one volume get one bind each
//!   (cheap, and each goes with its container's Delete; no pod-wide counts
//!   to keep right across failures).
//! - **Namespace paths** (`linux.namespaces[].path`): CRI gives the sandbox
//!   (pause) container the pod's host netns (`/var/run/netns/cni-…`), and
//!   app containers `/proc/<pause pid>/ns/…`. The pause pid is the one this
//!   shim reported, the shim's own (`tasks::reported_pid`): such a path
//!   becomes `/proc/<the sandbox's guest pid>/ns/…`; outside CRI
//!   `/proc/1/ns/…` (the guest's own) is kept, and any other `/proc` pid is
//!   refused. Any other path is a host one: the sandbox gets a new namespace instead (the VM is
//!   the pod's boundary), except the network one, which it does not get
//!   at all: it stays in the guest's own, where eth0 is the pod's veth
//!   (see `crate::pod_net`); an app container the sandbox's
//!   namespace `/proc/<sandbox pid>/ns/<type>`, and a spec from neither is
//!   refused (INVALID_ARGUMENT: the VM cannot join a host namespace).
//!
//! [`adapt`] is pure (the spec, the bundle path and a lookup of the
//! sandbox's pid); the host side is `host_fs`'s.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::TaskError;
use super::rootfs;

/// CRI's annotations (containerd 1.6).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The name of a container's volume directory, in its shared directory.
pub const MOUNTS_DIR: &str = "mounts";

/// A bind mount of a host path, shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// `mounts[i] (destination)`, for messages.
    pub what: String,
    /// Its index in `mounts`: the name of its mount point.
    pub index: usize,
    /// The host path (absolute).
    pub source: PathBuf,
    /// `rbind`: submounts of the source come along.
    pub recursive: bool,
    pub read_only: bool,
}

/// The spec for the guest, and the host mounts it needs.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub json: Vec<u8>,
    pub volumes: Vec<Volume>,
}

/// The guest's path of volume `index` of container `cid`, the pod share
/// being mounted at `guest_share`.
pub fn guest_volume_path(guest_share: &str, cid: &str, index: usize) -> String {
    format!(
        "{}/{cid}/{MOUNTS_DIR}/{index}",
        guest_share.trim_end_matches('/')
    )
}

/// Rewrites container `cid`'s spec for the guest (see the module's doc).
/// `sandbox_pid` gives the guest pid of a pod's running sandbox task.
pub fn adapt(
    cid: &str,
    bundle: &Path,
    spec_json: &[u8],
    guest_share: &str,
    sandbox_pid: &dyn Fn(&str) -> Option<u32>,
) -> Result<GuestSpec, TaskError> {
    let mut spec: Value = serde_json::from_slice(spec_json)
        .map_err(|e| TaskError::invalid(cid, format!("config.json: {e}")))?;
    if !spec.is_object() {
        return Err(TaskError::invalid(cid, "config.json: not an object"));
    }
    let volumes = bind_mounts(cid, bundle, &mut spec, guest_share)?;
    namespaces(cid, &mut spec, sandbox_pid)?;
    let json = serde_json::to_vec(&spec)
        .map_err(|e| TaskError::internal(cid, format!("writing the guest's spec: {e}")))?;
    Ok(GuestSpec { json, volumes })
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// Whether a spec mount is a bind, as runc reads it.
fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|s| matches!(s.as_str(), Some("bind" | "rbind")))
        })
}

fn bind_mounts(
    cid: &str,
    bundle: &Path,
    spec: &mut Value,
    guest_share: &str,
) -> Result<Vec<Volume>, TaskError> {
    let Some(mounts) = spec.get_mut("mounts") else {
        return Ok(Vec::new());
    };
    let Some(mounts) = mounts.as_array_mut() else {
        return Err(TaskError::invalid(cid, "mounts: not an array"));
    };
    let mut volumes = Vec::new();
    for (i, m) in mounts.iter_mut().enumerate() {
        if !m.is_object() {
            return Err(TaskError::invalid(
                cid,
                format!("mounts[{i}]: not an object"),
            ));
        }
        if !is_bind(m) {
            continue;
        }
        let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
        let what = format!("mounts[{i}] ({dest})");
        let options: Vec<String> = match m.get("options") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|o| {
                    o.as_str().map(str::to_owned).ok_or_else(|| {
                        TaskError::invalid(cid, format!("{what}: options: not strings"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(TaskError::invalid(
                    cid,
                    format!("{what}: options: not an array"),
                ))
            }
        };
        let source = match m.get("source").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Path::new(s),
            _ => {
                return Err(TaskError::invalid(
                    cid,
                    format!("{what}: a bind mount needs a source"),
                ))
            }
        };
        // OCI: a relative bind source is relative to the bundle.
        let source = if source.is_absolute() {
            source.to_owned()
        } else {
            bundle.join(source)
        };
        let o = rootfs::parse_options(&options);
        volumes.push(Volume {
            what,
            index: i,
            source,
            recursive: o.flags & libc::MS_REC != 0,
            read_only: o.flags & libc::MS_RDONLY != 0,
        });
        m["source"] = Value::String(guest_volume_path(guest_share, cid, i));
    }
    Ok(volumes)
}

/// The `/proc/<pid>/ns/` file of a namespace type (None: not joinable).
fn ns_file(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "network" => "net",
        "pid" => "pid",
        "ipc" => "ipc",
        "uts" => "uts",
        "cgroup" => "cgroup",
        _ => return None,
    })
}

/// Rewrites `linux.namespaces` for the guest (see the module's doc).
///
/// `/proc/<pid>/ns/<file>` paths: the task pid containerd knows is the
/// shim's own (`super::tasks::reported_pid`), so CRI's
/// `/proc/<reported pid>/ns/…` names the pod's sandbox: it becomes the
/// sandbox task's guest pid (`sandbox_pid` of the CRI sandbox id, or else
/// of the `io.husk.pod` task of a ctr pod). Outside CRI, `/proc/1/ns/…`
/// (the guest's own namespaces, a host admin's explicit choice) is kept.
/// Any other pid names no task of this pod (in the guest it would be
/// some unrelated process): refused.
fn namespaces(
    cid: &str,
    spec: &mut Value,
    sandbox_pid: &dyn Fn(&str) -> Option<u32>,
) -> Result<(), TaskError> {
    /// The ctr pod annotation (`super::cmd::POD_ANNOTATIONS`).
    const HUSK_POD: &str = "io.husk.pod";
    /// `/proc/<pid>/ns/<file>` → (pid, file).
    fn proc_ns(path: &str) -> Option<(u32, &str)> {
        let (pid, file) = path.strip_prefix("/proc/")?.split_once("/ns/")?;
        let ok_pid = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        let ok_file = !file.is_empty() && file.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        (ok_pid && ok_file).then_some(())?;
        Some((pid.parse().ok()?, file))
    }
    let kind = annotation(spec, CONTAINER_TYPE).map(str::to_owned);
    let sandbox = annotation(spec, SANDBOX_ID).map(str::to_owned);
    let pod = sandbox
        .clone()
        .or_else(|| annotation(spec, HUSK_POD).map(str::to_owned));
    let shim_pid = std::process::id();
    let Some(list) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    // Entries to drop: the process stays in the agent's namespace.
    let mut leave = Vec::new();
    for (i, n) in list.iter_mut().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let typ = n.get("type").and_then(Value::as_str).unwrap_or("");
        let path = match n.get("path").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => p.to_owned(),
            _ => continue,
        };
        if path.starts_with("/proc/") {
            let Some((pid, file)) = proc_ns(&path) else {
                return Err(TaskError::invalid(
                    cid,
                    format!("{field}.path: {path} is not /proc/<pid>/ns/<namespace>"),
                ));
            };
            let guest_pid = match (pid, kind.as_deref(), pod.as_deref()) {
                (p, _, Some(sid)) if p == shim_pid => sandbox_pid(sid).ok_or_else(|| {
                    TaskError::precondition(
                        cid,
                        format!("{field}.path: {path} names the pod's sandbox task {sid}, which is not running in this shim"),
                    )
                })?,
                (1, None, _) => 1,
                _ => {
                    return Err(TaskError::invalid(
                        cid,
                        format!(
                            "{field}.path: {path} names no task of this pod (its tasks' pid is this shim's, {shim_pid}, for the pod's sandbox task)"
                        ),
                    ))
                }
            };
            n["path"] = Value::String(format!("/proc/{guest_pid}/ns/{file}"));
            continue;
        }
        // Not joinable at all: the agent says why.
        let Some(file) = ns_file(typ) else { continue };
        match (kind.as_deref(), sandbox.as_deref()) {
            (Some("sandbox"), _) if typ == "network" => {
                // The pod's network is the guest's own (eth0 is the pod's
                // veth, redirected): no namespace of its own, which also
                // saves the guest a new netns (~1 s here).
                tracing::debug!(container = cid, host_path = %path,
                    "sandbox: the guest's network namespace for the host's");
                leave.push(i);
            }
            (Some("sandbox"), _) => {
                // The pod's own namespace, in its VM.
                tracing::debug!(container = cid, namespace = typ, host_path = %path,
                    "sandbox: a new namespace in the guest for the host's");
                if let Some(o) = n.as_object_mut() {
                    o.remove("path");
                }
            }
            (Some("container"), Some(sid)) => {
                let pid = sandbox_pid(sid).ok_or_else(|| {
                    TaskError::precondition(
                        cid,
                        format!(
                            "{field}.path: {path} is a host namespace, and the pod's sandbox {sid} is not running in this shim"
                        ),
                    )
                })?;
                n["path"] = Value::String(format!("/proc/{pid}/ns/{file}"));
            }
            _ => {
                return Err(TaskError::invalid(
                    cid,
                    format!(
                        "{field}.path: {path} is a namespace of the host, which a container in the VM cannot join"
                    ),
                ))
            }
        }
    }
    for i in leave.into_iter().rev() {
        list.remove(i);
    }
    Ok(())
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
