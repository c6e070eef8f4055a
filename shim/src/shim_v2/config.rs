//! `/etc/husk/config.toml`: what every pod of this node gets unless an
//! allowed annotation says otherwise. Every key is optional; a missing
//! file means all defaults. `HUSK_CONFIG` names another file.
//!
//! ```toml
//! # Guest kernel and initramfs (`husk install` puts them here).
//! kernel = "/usr/share/husk/vmlinux"
//! initramfs = "/usr/share/husk/initramfs.cpio.gz"
//! # The pod VM's size when no container limit asks for more.
//! vcpus = 1
//! memory_mib = 256
//! # Memory added on top of a container's memory limit when the VM is
//! # sized from it (the guest kernel, the agent, page cache).
//! memory_overhead_mib = 128
//! # Templates: one per VM shape; the first pod of a shape boots cold and
//! # makes it, later ones restore.
//! templates = true
//! template_dir = "/var/lib/husk/templates"
//! # Per-pod state (sockets, the virtio-fs share's mounts).
//! run_dir = "/run/husk/pods"
//! # Each pod's guest console goes to <console_dir>/<pod>.log, at most 16 MiB
//! # per VM (a last line says the rest is dropped); unset: the console's
//! # lines go to the shim's log at debug level, at most 50 a second.
//! console_dir = "/var/log/husk"
//! # Move the shim (and its VMM threads) into the sandbox's host cgroup
//! # (`linux.cgroupsPath`), so the pod's cost is accounted there.
//! host_cgroups = true
//! # Debug logging (containerd's `-debug` turns it on too).
//! debug = false
//! # How long a restored VM's agent may take to answer, and a cold boot.
//! agent_timeout_s = 60
//! boot_timeout_s = 600
//! # The annotations a pod may use to override the keys above
//! # (`io.husk.config.<key>`); only these keys may appear.
//! enable_annotations = ["memory_mib", "vcpus"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file read when `HUSK_CONFIG` is unset.
pub const DEFAULT_PATH: &str = "/etc/husk/config.toml";
/// The annotation prefix of per-pod overrides.
pub const ANNOTATION_PREFIX: &str = "io.husk.config.";
/// The keys an annotation may ever override.
const OVERRIDABLE: &[&str] = &["memory_mib", "vcpus", "templates"];

/// The shim's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub memory_overhead_mib: u64,
    pub templates: bool,
    pub template_dir: PathBuf,
    pub run_dir: PathBuf,
    pub console_dir: Option<PathBuf>,
    pub host_cgroups: bool,
    pub debug: bool,
    pub agent_timeout_s: u64,
    pub boot_timeout_s: u64,
    pub enable_annotations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kernel: "/usr/share/husk/vmlinux".into(),
            initramfs: "/usr/share/husk/initramfs.cpio.gz".into(),
            vcpus: 1,
            memory_mib: 256,
            memory_overhead_mib: 128,
            templates: true,
            template_dir: crate::sandbox::store::DEFAULT_ROOT.into(),
            run_dir: "/run/husk/pods".into(),
            console_dir: None,
            host_cgroups: true,
            debug: false,
            agent_timeout_s: 60,
            boot_timeout_s: 600,
            enable_annotations: vec!["memory_mib".into(), "vcpus".into()],
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("annotation {key}: {message}")]
    Annotation { key: String, message: String },
}

impl Config {
    /// `HUSK_CONFIG`, else [`DEFAULT_PATH`]; a missing default file is the
    /// defaults, a missing named file an error.
    pub fn load() -> Result<Self, ConfigError> {
        match std::env::var_os("HUSK_CONFIG") {
            Some(p) => Self::from_file(Path::new(&p)),
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH)),
            None => Ok(Self::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        c.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if self.vcpus == 0 {
            return Err("vcpus must be at least 1".into());
        }
        if self.memory_mib < 64 {
            return Err(format!("memory_mib {} is below 64", self.memory_mib));
        }
        if let Some(k) = self
            .enable_annotations
            .iter()
            .find(|k| !OVERRIDABLE.contains(&k.as_str()))
        {
            return Err(format!(
                "enable_annotations: {k:?} cannot be overridden (allowed: {OVERRIDABLE:?})"
            ));
        }
        Ok(())
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_s)
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_s)
    }

    /// This config with the pod's `io.husk.config.*` annotations applied;
    /// an annotation for a key not in `enable_annotations`, or with a bad
    /// value, is an error (a pod never silently gets another size than it
    /// asked for).
    pub fn with_annotations(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut c = self.clone();
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let err = |message: String| ConfigError::Annotation {
                key: key.clone(),
                message,
            };
            if !c.enable_annotations.iter().any(|k| k == name) {
                return Err(err(format!(
                    "not allowed by enable_annotations ({:?})",
                    c.enable_annotations
                )));
            }
            match name {
                "memory_mib" => {
                    c.memory_mib = value.parse().map_err(|e| err(format!("{value:?}: {e}")))?
                }
                "vcpus" => c.vcpus = value.parse().map_err(|e| err(format!("{value:?}: {e}")))?,
                "templates" => {
                    c.templates = value.parse().map_err(|e| err(format!("{value:?}: {e}")))?
                }
                _ => return Err(err("unknown key".into())),
            }
        }
        c.check().map_err(|message| ConfigError::Annotation {
            key: ANNOTATION_PREFIX.to_owned() + "*",
            message,
        })?;
        Ok(c)
    }

    /// The VM's memory for a first container whose spec limits it to
    /// `limit_bytes`: the limit plus the overhead, rounded up to 64 MiB (so
    /// that similar pods share a template), never below `memory_mib`.
    pub fn vm_memory_mib(&self, limit_bytes: Option<i64>) -> u64 {
        let Some(limit) = limit_bytes.filter(|l| *l > 0) else {
            return self.memory_mib;
        };
        let want = (limit as u64).div_ceil(1 << 20) + self.memory_overhead_mib;
        want.div_ceil(64).saturating_mul(64).max(self.memory_mib)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_and_keys() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        let c = Config::parse(
            "vcpus = 2\nmemory_mib = 512\ndebug = true\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.debug), (2, 512, true));
        let e = Config::parse("memroy_mib = 5", Path::new("/etc/husk/config.toml")).unwrap_err();
        assert!(e.to_string().contains("memroy_mib"), "{e}");
        let e = Config::parse("vcpus = 0", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        let e = Config::parse("enable_annotations = [\"kernel\"]", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
    }

    #[test]
    fn annotations_are_allowlisted() {
        let c = Config::default();
        let mut a = BTreeMap::new();
        a.insert("io.husk.config.memory_mib".to_string(), "512".to_string());
        a.insert("other".to_string(), "x".to_string());
        assert_eq!(c.with_annotations(&a).unwrap().memory_mib, 512);
        a.insert("io.husk.config.templates".to_string(), "false".to_string());
        let e = c.with_annotations(&a).unwrap_err();
        assert!(e.to_string().contains("templates"), "{e}");
        let mut a = BTreeMap::new();
        a.insert("io.husk.config.vcpus".to_string(), "many".to_string());
        assert!(c.with_annotations(&a).is_err());
    }

    #[test]
    fn vm_follows_the_limit() {
        let c = Config::default();
        assert_eq!(c.vm_memory_mib(None), 256);
        assert_eq!(c.vm_memory_mib(Some(64 << 20)), 256);
        // 512 MiB + 128 overhead = 640.
        assert_eq!(c.vm_memory_mib(Some(512 << 20)), 640);
        assert_eq!(c.vm_memory_mib(Some((512 << 20) + 1)), 704);
        assert_eq!(c.vm_memory_mib(Some(-1)), 256);
    }
}
