//! The OCI runtime spec (`config.json`) of a `husk run` container: the one
//! `runc spec` writes ([`runc_default`]) or a bundle's ([`load_bundle`]),
//! with the command line's flags laid over it ([`SpecOptions::apply`]).
//!
//! Differences from `runc spec`: no network namespace (the VM is the
//! sandbox; the container shares the guest's network), `root.readonly`
//! only with `--read-only`, `process.terminal` and `TERM=xterm` only with
//! `-t`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxPids, LinuxResources, Process, Spec};

/// `PATH` of the default spec (runc's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a spec could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("bundle {}: the spec has no {what}", path.display())]
    Incomplete { path: PathBuf, what: &'static str },
    #[error("the spec: {0}")]
    Invalid(String),
    #[error("--env {0:?}: expected KEY=VALUE with a non-empty KEY")]
    Env(String),
    #[error("--memory {0} MiB: too large")]
    Memory(u64),
    #[error("the spec as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `runc spec`'s `config.json` (runc 1.1), less the network namespace,
/// with `root.readonly` and `process.terminal` false and no `TERM`.
fn runc_default_json() -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh"],
            "env": [DEFAULT_PATH],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "husk",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, { "type": "cgroup" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// The spec `runc spec` writes (see the module docs for the differences).
pub fn runc_default() -> Result<Spec, SpecError> {
    serde_json::from_value(runc_default_json()).map_err(|e| SpecError::Invalid(e.to_string()))
}

/// Reads `DIR/config.json`; returns the spec and its root file system
/// (`root.path`, relative to DIR unless absolute).
pub fn load_bundle(dir: &Path) -> Result<(Spec, PathBuf), SpecError> {
    let path = dir.join("config.json");
    let spec = Spec::load(&path).map_err(|source| SpecError::Bundle {
        path: path.clone(),
        source,
    })?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or(SpecError::Incomplete {
            path: path.clone(),
            what: "root.path",
        })?;
    if spec.process().is_none() {
        return Err(SpecError::Incomplete {
            path,
            what: "process",
        });
    }
    Ok((spec, dir.join(root)))
}

/// What the command line says about the container; each set field
/// overrides the spec's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecOptions {
    /// The command (empty: the spec's).
    pub args: Vec<String>,
    /// A terminal (`-t`): `process.terminal`, and `TERM=xterm` unless the
    /// environment sets TERM.
    pub terminal: bool,
    /// `KEY=VALUE` each, replacing the spec's value of KEY.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// uid, and gid when given.
    pub user: Option<(u32, Option<u32>)>,
    /// `linux.resources.memory.limit`, in MiB.
    pub memory_mib: Option<u64>,
    /// `linux.resources.pids.limit`.
    pub pids: Option<i64>,
    /// `root.readonly` (only ever turned on).
    pub read_only: bool,
    pub hostname: Option<String>,
}

impl SpecOptions {
    /// Lays the options over `spec`.
    pub fn apply(&self, spec: &mut Spec) -> Result<(), SpecError> {
        let mut process = spec.process().clone().unwrap_or_default();
        self.apply_process(&mut process)?;
        spec.set_process(Some(process));
        if self.read_only {
            let mut root = spec.root().clone().unwrap_or_default();
            root.set_readonly(Some(true));
            spec.set_root(Some(root));
        }
        if let Some(h) = &self.hostname {
            spec.set_hostname(Some(h.clone()));
        }
        if self.memory_mib.is_some() || self.pids.is_some() {
            let mut linux = spec.linux().clone().unwrap_or_default();
            let mut res = linux.resources().clone().unwrap_or_else(no_resources);
            if let Some(mib) = self.memory_mib {
                let bytes = mib
                    .checked_mul(1 << 20)
                    .and_then(|b| i64::try_from(b).ok())
                    .ok_or(SpecError::Memory(mib))?;
                let mut mem = (*res.memory()).unwrap_or_default();
                mem.set_limit(Some(bytes));
                res.set_memory(Some(mem));
            }
            if let Some(n) = self.pids {
                let mut pids = LinuxPids::default();
                pids.set_limit(n);
                res.set_pids(Some(pids));
            }
            linux.set_resources(Some(res));
            spec.set_linux(Some(linux));
        }
        Ok(())
    }

    /// Lays the process options over `process` (also what an exec gets).
    pub fn apply_process(&self, process: &mut Process) -> Result<(), SpecError> {
        if !self.args.is_empty() {
            process.set_args(Some(self.args.clone()));
        }
        let mut env = process.env().clone().unwrap_or_default();
        for kv in &self.env {
            set_env(&mut env, kv)?;
        }
        if self.terminal {
            process.set_terminal(Some(true));
            if !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
        }
        process.set_env(Some(env));
        if let Some(cwd) = &self.cwd {
            process.set_cwd(cwd.into());
        }
        if let Some((uid, gid)) = self.user {
            let user = process.user_mut();
            user.set_uid(uid);
            if let Some(gid) = gid {
                user.set_gid(gid);
            }
        }
        Ok(())
    }
}

/// An empty `LinuxResources` (oci-spec's default carries a device list).
fn no_resources() -> LinuxResources {
    let mut r = LinuxResources::default();
    r.set_devices(None);
    r
}

/// Sets `kv` (`KEY=VALUE`) in `env`, replacing KEY's entry.
fn set_env(env: &mut Vec<String>, kv: &str) -> Result<(), SpecError> {
    let key = match kv.split_once('=') {
        Some((k, _)) if !k.is_empty() => k,
        _ => return Err(SpecError::Env(kv.to_owned())),
    };
    let prefix = format!("{key}=");
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(e) => *e = kv.to_owned(),
        None => env.push(kv.to_owned()),
    }
    Ok(())
}

/// The spec as `config.json` bytes.
pub fn to_json(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    Ok(serde_json::to_vec(spec)?)
}

/// An OCI `process` object for an exec: the spec's process (its user,
/// capabilities, rlimits, environment) with `options` laid over it.
pub fn exec_process_json(spec: &Spec, options: &SpecOptions) -> Result<Vec<u8>, SpecError> {
    let mut p = spec.process().clone().unwrap_or_default();
    // An exec has a terminal only when it asks for one.
    p.set_terminal(Some(false));
    options.apply_process(&mut p)?;
    Ok(serde_json::to_vec(&p)?)
}

/// Parses `UID[:GID]` (numbers only: the rootfs's passwd is not read).
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>), String> {
    let num = |v: &str, what: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{s:?}: the {what} must be a number (UID[:GID])"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((num(u, "uid")?, Some(num(g, "gid")?))),
        None => Ok((num(s, "uid")?, None)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use serde_json::Value;

    use super::*;

    fn json(spec: &Spec) -> Value {
        serde_json::from_slice(&to_json(spec).unwrap()).unwrap()
    }

    #[test]
    fn the_default_is_runcs_without_a_network_namespace() {
        let v = json(&runc_default().unwrap());
        assert_eq!(v["ociVersion"], "1.0.2-dev");
        assert_eq!(v["process"]["args"], serde_json::json!(["sh"]));
        assert_eq!(v["process"]["env"], serde_json::json!([DEFAULT_PATH]));
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(v["process"]["rlimits"][0]["hard"], 1024);
        let mut caps: Vec<String> =
            serde_json::from_value(v["process"]["capabilities"]["bounding"].clone()).unwrap();
        caps.sort();
        assert_eq!(
            caps,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup"]);
        let mounts: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert_eq!(v["linux"]["readonlyPaths"][3], "/proc/sys");
        assert_eq!(v["linux"]["resources"]["devices"][0]["access"], "rwm");
        assert_eq!(v["root"]["readonly"], false);
        assert!(v["linux"].get("resources").unwrap().get("memory").is_none());
    }

    #[test]
    fn flags_land_where_they_belong() {
        let mut spec = runc_default().unwrap();
        let opts = SpecOptions {
            args: vec!["echo".into(), "hi there".into()],
            terminal: true,
            env: vec!["A=1".into(), "PATH=/bin".into(), "B=x=y".into()],
            cwd: Some("/tmp".into()),
            user: Some((1000, Some(100))),
            memory_mib: Some(64),
            pids: Some(32),
            read_only: true,
            hostname: Some("web".into()),
        };
        opts.apply(&mut spec).unwrap();
        let v = json(&spec);
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["echo", "hi there"])
        );
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(
            v["process"]["env"],
            serde_json::json!(["PATH=/bin", "A=1", "B=x=y", "TERM=xterm"])
        );
        assert_eq!(v["process"]["cwd"], "/tmp");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["gid"], 100);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 32);
        // The device rules stay.
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "web");

        // A uid alone keeps the gid; TERM from --env wins.
        let mut spec = runc_default().unwrap();
        SpecOptions {
            terminal: true,
            env: vec!["TERM=vt100".into()],
            user: Some((7, None)),
            ..SpecOptions::default()
        }
        .apply(&mut spec)
        .unwrap();
        let v = json(&spec);
        assert_eq!(v["process"]["user"]["gid"], 0);
        assert_eq!(
            v["process"]["env"],
            serde_json::json!([DEFAULT_PATH, "TERM=vt100"])
        );
        assert_eq!(v["process"]["args"], serde_json::json!(["sh"]));
    }

    #[test]
    fn bad_flags() {
        let mut spec = runc_default().unwrap();
        for bad in ["=x", "NOEQUALS", ""] {
            let opts = SpecOptions {
                env: vec![bad.into()],
                ..SpecOptions::default()
            };
            assert!(
                matches!(opts.apply(&mut spec), Err(SpecError::Env(_))),
                "{bad}"
            );
        }
        let opts = SpecOptions {
            memory_mib: Some(u64::MAX),
            ..SpecOptions::default()
        };
        assert!(matches!(opts.apply(&mut spec), Err(SpecError::Memory(_))));
        assert_eq!(parse_user("1000"), Ok((1000, None)));
        assert_eq!(parse_user("0:5"), Ok((0, Some(5))));
        for bad in ["root", "1:", ":1", "-1", "1:2:3"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundles() {
        let dir = std::env::temp_dir().join(format!("husk-spec-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = runc_default().unwrap();
        SpecOptions {
            args: vec!["/bin/true".into()],
            ..SpecOptions::default()
        }
        .apply(&mut spec)
        .unwrap();
        std::fs::write(dir.join("config.json"), to_json(&spec).unwrap()).unwrap();
        let (back, rootfs) = load_bundle(&dir).unwrap();
        assert_eq!(back, spec);
        assert_eq!(rootfs, dir.join("rootfs"));

        std::fs::write(dir.join("config.json"), b"{\"ociVersion\": 1}").unwrap();
        let e = load_bundle(&dir).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        std::fs::write(dir.join("config.json"), b"{\"ociVersion\": \"1.0.2\"}").unwrap();
        let e = load_bundle(&dir).unwrap_err();
        assert!(e.to_string().ends_with("the spec has no root.path"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = load_bundle(&dir).unwrap_err();
        assert!(matches!(e, SpecError::Bundle { .. }), "{e}");
    }

    #[test]
    fn exec_processes() {
        let spec = runc_default().unwrap();
        let opts = SpecOptions {
            args: vec!["ps".into()],
            env: vec!["X=1".into()],
            ..SpecOptions::default()
        };
        let v: Value = serde_json::from_slice(&exec_process_json(&spec, &opts).unwrap()).unwrap();
        assert_eq!(v["args"], serde_json::json!(["ps"]));
        assert_eq!(v["env"], serde_json::json!([DEFAULT_PATH, "X=1"]));
        assert_eq!(v["terminal"], false);
        assert_eq!(v["noNewPrivileges"], true);
    }
}
