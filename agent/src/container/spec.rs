//! [`ContainerSpec::validate`]: an OCI runtime spec (config.json) checked
//! field by field and turned into a [`Plan`]: every path, string, mount
//! call, capability mask and seccomp program the child needs, built before
//! the clone. Errors name the field.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use super::caps::{self, CapSets};
use super::cgroup::{self, Write1};
use super::error::SpecError;
use super::mounts::{self, MountContext, RootfsPlan};
use super::seccomp::{self, Filters};

/// The PATH used to find argv[0] when the process's env has none (runc's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The longest container or exec id accepted.
pub const ID_MAX: usize = 64;

/// Namespaces: the new ones (clone flags) and those joined by path.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// CLONE_NEW* for clone(2) (not CLONE_NEWCGROUP: see `new_cgroup`).
    pub clone_flags: libc::c_int,
    /// Unshared after joining the cgroup, so that its root is the
    /// container's cgroup.
    pub new_cgroup: bool,
    /// (CLONE_NEW* type, path, field) to setns into in the child.
    pub join: Vec<(libc::c_int, PathBuf, String)>,
    /// A pid namespace to join: setns on the cloning thread (it applies to
    /// that thread's children), restored after the clone.
    pub join_pid: Option<PathBuf>,
    pub has_uts: bool,
}

/// The process fields, checked (the container's init, or an exec).
#[derive(Debug, Clone, Default)]
pub struct ProcessPlan {
    pub args: Vec<CString>,
    /// Where to look for argv[0] in the container, in order (execvpe-like,
    /// inside the container after pivot_root).
    pub candidates: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub additional_gids: Vec<libc::gid_t>,
    pub umask: libc::mode_t,
    pub caps: Option<CapSets>,
    pub rlimits: Vec<(libc::c_int, libc::rlimit)>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<CString>,
    pub terminal: bool,
    /// process.consoleSize: (rows, cols).
    pub console_size: Option<(u16, u16)>,
}

/// A checked container: what [`super::Containers::create`] needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub rootfs: PathBuf,
    pub namespaces: Namespaces,
    pub root: RootfsPlan,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    /// (/proc/sys/... path, value), written after pivot_root.
    pub sysctl: Vec<(CString, CString)>,
    pub resources: Vec<Write1>,
    /// Whether linux.resources asked for anything (then cgroups are needed).
    pub wants_cgroup_limits: bool,
    pub process: ProcessPlan,
    pub seccomp: Filters,
    /// A CRI pod's sandbox (pause) container: see [`PAUSE_ARG`].
    pub light_sandbox: bool,
}

/// The annotation containerd's CRI puts on a pod's containers, and the
/// value of its sandbox (pause) container.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX: &str = "sandbox";
/// The agent binary in the guest, and the argument that makes it a pause
/// process. A CRI sandbox container only holds the pod's namespaces (ipc,
/// uts, pid) for its app containers to join; nothing needs its root file
/// system. So the agent runs it as itself (`/init husk-pause`: reaps, exits
/// on SIGTERM/SIGINT) in new ipc, uts, pid and mount namespaces with the
/// spec's hostname, user, capabilities, rlimits, seccomp and cgroup, and
/// skips its rootfs, ~30 mounts and the exec from the image: the larger
/// part of a pod start's guest work on emulated hosts. Its root is an empty
/// read-only tmpfs (one mount and a pivot_root; `/init` is exec'd from a
/// descriptor opened before), so the app containers of a
/// `shareProcessNamespace` pod, where it is their PID 1, see nothing of the
/// guest through `/proc/1/root`. Nothing can be exec'd into it.
pub const AGENT_BINARY: &str = "/init";
pub const PAUSE_ARG: &str = "husk-pause";

/// Entry point: see the module docs.
pub struct ContainerSpec;

/// A container or exec id: 1..=64 of `[A-Za-z0-9_.-]`, not starting with a
/// dot (it becomes a cgroup directory name).
pub fn validate_id(field: &str, id: &str) -> Result<(), SpecError> {
    if id.is_empty() || id.len() > ID_MAX {
        return Err(SpecError::new(
            field,
            format!("{} bytes, want 1 to {ID_MAX}", id.len()),
        ));
    }
    if id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(SpecError::new(
            field,
            format!("{id:?}: want letters, digits, '_', '-' and '.' (not first)"),
        ));
    }
    Ok(())
}

fn c(field: &str, s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::new(field, format!("{s:?} contains NUL")))
}

/// Decodes JSON with the path of a bad element in the error.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &[u8],
) -> Result<T, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { what.to_owned() } else { path };
        SpecError::new(field, e.inner().to_string())
    })
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

impl ProcessPlan {
    /// Checks `process` (field prefix `field`: `process` for a container,
    /// `process` too for an exec document).
    pub fn from_spec(field: &str, p: &Process) -> Result<Self, SpecError> {
        let args = p.args().as_deref().unwrap_or(&[]);
        let Some(arg0) = args.first() else {
            return Err(SpecError::new(
                format!("{field}.args"),
                "empty: want the command",
            ));
        };
        if arg0.is_empty() {
            return Err(SpecError::new(format!("{field}.args[0]"), "empty"));
        }
        if p.command_line().is_some() {
            return Err(SpecError::new(
                format!("{field}.commandLine"),
                "Windows only",
            ));
        }
        let args = args
            .iter()
            .enumerate()
            .map(|(i, a)| c(&format!("{field}.args[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Vec::new();
        let mut path = DEFAULT_PATH.to_owned();
        for (i, kv) in p.env().iter().flatten().enumerate() {
            let f = format!("{field}.env[{i}]");
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    if k == "PATH" {
                        v.clone_into(&mut path);
                    }
                }
                _ => return Err(SpecError::new(f, format!("{kv:?} is not KEY=VALUE"))),
            }
            env.push(c(&f, kv)?);
        }
        crate::guest_env::add(&mut env);
        let candidates = if arg0.contains('/') {
            vec![c(&format!("{field}.args[0]"), arg0)?]
        } else {
            path.split(':')
                .map(|d| if d.is_empty() { "." } else { d })
                .map(|d| {
                    c(
                        &format!("{field}.env PATH"),
                        &format!("{}/{arg0}", d.trim_end_matches('/')),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let cwd = p.cwd();
        if !cwd.is_absolute() {
            return Err(SpecError::new(
                format!("{field}.cwd"),
                format!("{:?} is not absolute", cwd.display()),
            ));
        }
        let cwd = mounts::c_path(&format!("{field}.cwd"), cwd)?;
        let user = p.user();
        if user.username().is_some() {
            return Err(SpecError::new(
                format!("{field}.user.username"),
                "Windows only",
            ));
        }
        let umask = user.umask().unwrap_or(0o022);
        if umask > 0o777 {
            return Err(SpecError::new(
                format!("{field}.user.umask"),
                format!("{umask:o} is not a mode"),
            ));
        }
        let caps = match p.capabilities() {
            Some(cs) => Some(CapSets::from_spec(
                &format!("{field}.capabilities"),
                cs,
                caps::last_cap(),
            )?),
            // No capabilities field: none (the spec's meaning; runc agrees).
            None => Some(CapSets::from_spec(
                &format!("{field}.capabilities"),
                &oci_spec::runtime::LinuxCapabilities::default_empty(),
                caps::last_cap(),
            )?),
        };
        let mut rlimits = Vec::new();
        for (i, r) in p.rlimits().iter().flatten().enumerate() {
            let f = format!("{field}.rlimits[{i}]");
            if r.soft() > r.hard() {
                return Err(SpecError::new(
                    f,
                    format!("soft {} above hard {}", r.soft(), r.hard()),
                ));
            }
            let resource = rlimit_resource(r.typ());
            if rlimits.iter().any(|(res, _)| *res == resource) {
                return Err(SpecError::new(f, format!("{:?} given twice", r.typ())));
            }
            rlimits.push((
                resource,
                libc::rlimit {
                    rlim_cur: r.soft(),
                    rlim_max: r.hard(),
                },
            ));
        }
        let oom_score_adj = match p.oom_score_adj() {
            Some(v) if !(-1000..=1000).contains(&v) => {
                return Err(SpecError::new(
                    format!("{field}.oomScoreAdj"),
                    format!("{v} is not -1000..1000"),
                ))
            }
            Some(v) => Some(c(field, &v.to_string())?),
            None => None,
        };
        for (name, set) in [
            ("apparmorProfile", p.apparmor_profile().is_some()),
            ("selinuxLabel", p.selinux_label().is_some()),
            ("ioPriority", p.io_priority().is_some()),
            ("scheduler", p.scheduler().is_some()),
            ("execCPUAffinity", p.exec_cpu_affinity().is_some()),
        ] {
            if set {
                crate::log::log_once(&format!("containers: {field}.{name}: ignored"));
            }
        }
        let console_size = p.console_size().map(|b| {
            (
                u16::try_from(b.height()).unwrap_or(u16::MAX),
                u16::try_from(b.width()).unwrap_or(u16::MAX),
            )
        });
        Ok(Self {
            args,
            candidates,
            env,
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask,
            caps,
            rlimits,
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            oom_score_adj,
            terminal: p.terminal().unwrap_or(false),
            console_size,
        })
    }

    /// An exec's process document (OCI `Process` JSON).
    pub fn from_json(json: &[u8]) -> Result<Self, SpecError> {
        let p: Process = decode("process", json)?;
        Self::from_spec("process", &p)
    }
}

/// Helps `LinuxCapabilities` have empty sets (its `Default` has three caps).
trait EmptyCaps {
    fn default_empty() -> Self;
}

impl EmptyCaps for oci_spec::runtime::LinuxCapabilities {
    fn default_empty() -> Self {
        let mut c = Self::default();
        c.set_bounding(None)
            .set_effective(None)
            .set_inheritable(None)
            .set_permitted(None)
            .set_ambient(None);
        c
    }
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Where the container's cgroup will be, for a cgroup mount without a
/// cgroup namespace: `<root>/<parent>/<id>`.
pub struct CgroupLayout<'a> {
    pub root: Option<&'a Path>,
    pub parent: &'a str,
}

impl ContainerSpec {
    /// Parses and checks `spec_json` for container `id` whose root
    /// filesystem is `rootfs` (`root.path` already resolved against the
    /// bundle by the caller). See the module docs.
    pub fn validate(id: &str, spec_json: &[u8], rootfs: &Path) -> Result<Plan, SpecError> {
        Self::validate_with(
            id,
            spec_json,
            rootfs,
            &CgroupLayout {
                root: Some(Path::new("/sys/fs/cgroup")),
                parent: "husk",
            },
        )
    }

    pub fn validate_with(
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        layout: &CgroupLayout<'_>,
    ) -> Result<Plan, SpecError> {
        validate_id("id", id)?;
        let spec: Spec = decode("spec", spec_json)?;
        if spec.root().is_none() {
            return Err(SpecError::new("root", "missing"));
        }
        let light_sandbox = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CRI_CONTAINER_TYPE))
            .is_some_and(|t| t == CRI_SANDBOX);
        // A light sandbox never uses its rootfs (its root is an empty one
        // of its own): not resolved, which spares the pod's first guest
        // request the lookups of its path over virtio-fs.
        let rootfs = if light_sandbox {
            rootfs.to_path_buf()
        } else {
            match std::fs::canonicalize(rootfs) {
                Ok(p) if p.is_dir() => p,
                Ok(p) => {
                    return Err(SpecError::new(
                        "root.path",
                        format!("{}: not a directory", p.display()),
                    ))
                }
                Err(e) => {
                    return Err(SpecError::missing(
                        "root.path",
                        format!("{}: {e}", rootfs.display()),
                    ))
                }
            }
        };
        let Some(process) = spec.process() else {
            return Err(SpecError::new("process", "missing"));
        };
        let mut process = ProcessPlan::from_spec("process", process)?;
        if light_sandbox {
            process.args = vec![
                c("process.args", AGENT_BINARY)?,
                c("process.args", PAUSE_ARG)?,
            ];
            process.candidates = vec![c("process.args", AGENT_BINARY)?];
            process.env = Vec::new();
            process.cwd = c("process.cwd", "/")?;
            process.terminal = false;
        }
        if spec.hooks().is_some() {
            return Err(SpecError::new(
                "hooks",
                "hooks are not supported in the guest (no host binaries to run)",
            ));
        }
        for (name, set) in [
            ("solaris", spec.solaris().is_some()),
            ("windows", spec.windows().is_some()),
            ("vm", spec.vm().is_some()),
            ("zos", spec.zos().is_some()),
        ] {
            if set {
                crate::log::log_once(&format!("containers: {name}: ignored (not Linux)"));
            }
        }
        let default_linux = oci_spec::runtime::Linux::default();
        let linux = spec.linux().as_ref().unwrap_or(&default_linux);
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(SpecError::new(
                "linux.uidMappings",
                "user namespaces are not supported (the VM is the isolation boundary)",
            ));
        }
        let mut ns = Namespaces::default();
        let mut seen = 0;
        for (i, n) in linux.namespaces().iter().flatten().enumerate() {
            let f = format!("linux.namespaces[{i}]");
            let flag = ns_flag(n.typ());
            if seen & flag != 0 {
                return Err(SpecError::new(
                    format!("{f}.type"),
                    format!("{:?} given twice", n.typ()),
                ));
            }
            seen |= flag;
            match n.typ() {
                LinuxNamespaceType::User => {
                    return Err(SpecError::new(
                        format!("{f}.type"),
                        "user namespaces are not supported (the VM is the isolation boundary)",
                    ))
                }
                LinuxNamespaceType::Time => {
                    return Err(SpecError::new(
                        format!("{f}.type"),
                        "time namespaces are not supported",
                    ))
                }
                _ => {}
            }
            if n.typ() == LinuxNamespaceType::Uts {
                ns.has_uts = true;
            }
            match n.path() {
                None => {
                    if flag == libc::CLONE_NEWCGROUP {
                        ns.new_cgroup = true;
                    } else {
                        ns.clone_flags |= flag;
                    }
                }
                Some(p) => {
                    if flag == libc::CLONE_NEWNS {
                        return Err(SpecError::new(
                            format!("{f}.path"),
                            "joining a mount namespace is not supported: a container gets its own",
                        ));
                    }
                    if !p.is_absolute() {
                        return Err(SpecError::new(
                            format!("{f}.path"),
                            format!("{} is not absolute", p.display()),
                        ));
                    }
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(SpecError::missing(
                            format!("{f}.path"),
                            format!("{}: {e}", p.display()),
                        ));
                    }
                    if flag == libc::CLONE_NEWPID {
                        ns.join_pid = Some(p.clone());
                    } else {
                        ns.join.push((flag, p.clone(), format!("{f}.path")));
                    }
                }
            }
        }
        if light_sandbox {
            // A mount namespace of its own whatever the spec says (its
            // root is an empty one: see [`PAUSE_ARG`]); no network one
            // (the VM's is the pod's).
            ns.clone_flags = (ns.clone_flags | libc::CLONE_NEWNS) & !libc::CLONE_NEWNET;
        } else if ns.clone_flags & libc::CLONE_NEWNS == 0 {
            return Err(SpecError::new(
                "linux.namespaces",
                "no mount namespace: a container needs its own (for its rootfs)",
            ));
        }
        if ns.clone_flags & libc::CLONE_NEWPID == 0 && ns.join_pid.is_none() {
            return Err(SpecError::new(
                "linux.namespaces",
                "no pid namespace: the workload must be PID 1 of its own (or join the pod's by path)",
            ));
        }
        let hostname = match spec.hostname() {
            Some(h) if !h.is_empty() => {
                if !ns.has_uts {
                    return Err(SpecError::new("hostname", "needs a uts namespace"));
                }
                if h.len() > 64 {
                    return Err(SpecError::new(
                        "hostname",
                        format!("{} bytes, at most 64", h.len()),
                    ));
                }
                Some(c("hostname", h)?)
            }
            _ => None,
        };
        let domainname = match spec.domainname() {
            Some(h) if !h.is_empty() => {
                if !ns.has_uts {
                    return Err(SpecError::new("domainname", "needs a uts namespace"));
                }
                Some(c("domainname", h)?)
            }
            _ => None,
        };
        // Mounts.
        let cgroup_dir = layout.root.map(|r| r.join(layout.parent).join(id));
        let ctx = MountContext {
            new_cgroup_ns: ns.new_cgroup,
            cgroup_dir: cgroup_dir.as_deref(),
        };
        let mut root = RootfsPlan {
            rootfs: mounts::c_path("root.path", &rootfs)?,
            root_readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            ..Default::default()
        };
        let mut dev_tmpfs = false;
        // A light sandbox mounts nothing (see [`PAUSE_ARG`]).
        let no_mounts: Vec<oci_spec::runtime::Mount> = Vec::new();
        let spec_mounts = if light_sandbox {
            &no_mounts
        } else {
            spec.mounts().as_deref().unwrap_or(&no_mounts)
        };
        for (i, m) in spec_mounts.iter().enumerate() {
            let (op, is_dev) = mounts::mount_op(&ctx, i, m)?;
            dev_tmpfs |= is_dev;
            root.mounts.push(op);
        }
        let (devices, symlinks) = if light_sandbox {
            (Vec::new(), Vec::new())
        } else {
            mounts::devices(dev_tmpfs, linux.devices().as_deref().unwrap_or(&[]))?
        };
        root.devices = devices;
        root.symlinks = symlinks;
        let (first, post) = match linux.rootfs_propagation().as_deref() {
            None | Some("") => (libc::MS_SLAVE | libc::MS_REC, None),
            Some(name) => {
                let Some(flags) = mounts::propagation(name) else {
                    return Err(SpecError::new(
                        "linux.rootfsPropagation",
                        format!("{name:?}: want shared, slave, private, unbindable or r*"),
                    ));
                };
                if flags & libc::MS_PRIVATE != 0 {
                    (libc::MS_PRIVATE | libc::MS_REC, None)
                } else if flags & libc::MS_SLAVE != 0 {
                    (libc::MS_SLAVE | libc::MS_REC, None)
                } else {
                    (libc::MS_SLAVE | libc::MS_REC, Some(flags))
                }
            }
        };
        root.root_propagation = first;
        root.post_propagation = post;
        for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
            let f = format!("linux.maskedPaths[{i}]");
            root.masked.push(mounts::c_path(
                &f,
                &mounts::container_path(&f, Path::new(p))?,
            )?);
        }
        for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
            let f = format!("linux.readonlyPaths[{i}]");
            root.readonly.push(mounts::c_path(
                &f,
                &mounts::container_path(&f, Path::new(p))?,
            )?);
        }
        // sysctl: only namespaced ones make sense; written under the
        // container's /proc/sys.
        let mut sysctl = Vec::new();
        let mut keys: Vec<_> = linux.sysctl().iter().flatten().collect();
        keys.sort();
        for (k, v) in keys {
            let f = format!("linux.sysctl.{k}");
            if k.is_empty() || k.contains("..") || k.starts_with('/') || k.starts_with('.') {
                return Err(SpecError::new(f, "not a sysctl name"));
            }
            // A light sandbox is in the VM's network namespace: the pod's.
            let netns = light_sandbox
                || ns.clone_flags & libc::CLONE_NEWNET != 0
                || ns.join.iter().any(|(t, _, _)| *t == libc::CLONE_NEWNET);
            let ipcns = ns.clone_flags & libc::CLONE_NEWIPC != 0
                || ns.join.iter().any(|(t, _, _)| *t == libc::CLONE_NEWIPC);
            let ok = (k.starts_with("net.") && netns)
                || ((k.starts_with("kernel.msg")
                    || k.starts_with("kernel.sem")
                    || k.starts_with("kernel.shm")
                    || k.starts_with("fs.mqueue."))
                    && ipcns)
                || ((k == "kernel.hostname" || k == "kernel.domainname") && ns.has_uts);
            if !ok {
                return Err(SpecError::new(
                    f,
                    "not a sysctl of a namespace the container has (net.*, kernel.shm*/msg*/sem*, fs.mqueue.*)",
                ));
            }
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            sysctl.push((c(&f, &path)?, c(&f, v)?));
        }
        // Resources.
        let (resources, wants) = match linux.resources() {
            Some(r) => {
                let w = cgroup::resource_writes("linux.resources", r)?;
                let wants = !w.is_empty();
                (w, wants)
            }
            None => (Vec::new(), false),
        };
        if linux.cgroups_path().is_some() {
            crate::log::log_once(
                "containers: linux.cgroupsPath ignored: the agent places them under its pod cgroup",
            );
        }
        let seccomp = match linux.seccomp() {
            Some(s) => seccomp::compile(s)?,
            None => Filters::default(),
        };
        for (name, set) in [
            ("linux.mountLabel", linux.mount_label().is_some()),
            ("linux.intelRdt", linux.intel_rdt().is_some()),
            ("linux.personality", linux.personality().is_some()),
            ("linux.memoryPolicy", linux.memory_policy().is_some()),
            ("linux.netDevices", linux.net_devices().is_some()),
            ("annotations", false),
        ] {
            if set {
                crate::log::log_once(&format!("containers: {name}: ignored"));
            }
        }
        if linux.time_offsets().is_some() {
            return Err(SpecError::new(
                "linux.timeOffsets",
                "time namespaces are not supported",
            ));
        }
        Ok(Plan {
            id: id.to_owned(),
            rootfs,
            namespaces: ns,
            root,
            hostname,
            domainname,
            sysctl,
            resources,
            wants_cgroup_limits: wants,
            process,
            seccomp,
            light_sandbox,
        })
    }
}
