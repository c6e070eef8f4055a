//! What makes a template valid to restore, and the key that names it in the
//! store.
//!
//! A restore is only right when the guest in the snapshot is the guest the
//! caller would have booted: the same kernel and initramfs, command line,
//! memory, vCPUs, device layout (disks with their ids, read-only flags and
//! sizes; shares with their tags, read-only flags and guest mount points) and the same husk
//! build (the state layout and device code). [`TemplateSpec`] holds those;
//! [`TemplateSpec::describe`] turns them into a canonical text whose
//! SHA-256 is the key. Files are identified by canonical path, size,
//! modification time, device and inode: replacing a kernel or initramfs
//! (a rebuild writes a new file) gives a new key without hashing tens of
//! MiB on every pod start.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A disk as the template sees it: the image itself comes with each VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDisk {
    /// The serial the guest reads (what the agent mounts by).
    pub id: String,
    pub read_only: bool,
    /// Bytes; each VM's image must have exactly this size.
    pub size_bytes: u64,
}

/// A virtio-fs share as the template sees it: each VM names its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateShare {
    pub tag: String,
    pub read_only: bool,
    /// Where the template's guest has it mounted (on an empty stand-in
    /// directory until a restore gives it the VM's), if it has.
    pub mount: Option<String>,
}

/// Everything a template's guest is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Arguments after husk's own command line.
    pub cmdline_extra: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// Whether the PVM compatibility command line is added (resolved, not
    /// `auto`: the key must not change meaning with the host).
    pub pvm_compat: bool,
    pub disks: Vec<TemplateDisk>,
    pub shares: Vec<TemplateShare>,
}

/// Key length in hex digits (128 bits of SHA-256).
pub const KEY_HEX_LEN: usize = 32;

impl TemplateSpec {
    /// The canonical description (what the key hashes), naming the husk
    /// build `build_id`. Reads the kernel's and initramfs's metadata.
    pub fn describe(&self, build_id: &str) -> std::io::Result<String> {
        let mut s = String::new();
        // Writing to a String cannot fail.
        // 2: every template has one virtio-net device (pod networking),
        // made with no backend; version 1 templates had none.
        let _ = writeln!(s, "husk-template 2");
        let _ = writeln!(s, "build {build_id}");
        let _ = writeln!(s, "kernel {}", file_identity(&self.kernel)?);
        let _ = writeln!(s, "initrd {}", file_identity(&self.initrd)?);
        let _ = writeln!(s, "cmdline {:?}", self.cmdline_extra);
        let _ = writeln!(s, "pvm_compat {}", self.pvm_compat);
        let _ = writeln!(s, "mem_mib {}", self.mem_mib);
        let _ = writeln!(s, "vcpus {}", self.vcpus);
        for d in &self.disks {
            let _ = writeln!(
                s,
                "disk {:?} ro={} size={}",
                d.id, d.read_only, d.size_bytes
            );
        }
        for sh in &self.shares {
            let mount = sh
                .mount
                .as_ref()
                .map(|m| format!(" mount={m:?}"))
                .unwrap_or_default();
            let _ = writeln!(s, "share {:?} ro={}{mount}", sh.tag, sh.read_only);
        }
        let _ = writeln!(s, "net mac={:02x?} mtu=none", super::POD_NET_MAC);
        Ok(s)
    }
}

/// The key of a description: hex of the first 128 bits of its SHA-256.
pub fn key_of(description: &str) -> String {
    let digest = Sha256::digest(description.as_bytes());
    hex(&digest[..KEY_HEX_LEN / 2])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` looks like a key (so `rm` never touches anything else).
pub fn is_key(s: &str) -> bool {
    s.len() == KEY_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `canonical-path size mtime_ns dev ino` of a file.
fn file_identity(path: &Path) -> std::io::Result<String> {
    let canon = std::fs::canonicalize(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let m = std::fs::metadata(&canon)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", canon.display())))?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", canon.display()),
        ));
    }
    Ok(format!(
        "{:?} {} {}.{:09} {} {}",
        canon,
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.dev(),
        m.ino()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn spec(dir: &Path) -> TemplateSpec {
        std::fs::write(dir.join("k"), b"kernel").unwrap();
        std::fs::write(dir.join("i"), b"initrd").unwrap();
        TemplateSpec {
            kernel: dir.join("k"),
            initrd: dir.join("i"),
            cmdline_extra: String::new(),
            mem_mib: 128,
            vcpus: 1,
            pvm_compat: false,
            disks: Vec::new(),
            shares: Vec::new(),
        }
    }

    #[test]
    fn every_field_changes_the_key() {
        let dir = std::env::temp_dir().join(format!("husk-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = spec(&dir);
        let key = |s: &TemplateSpec, b: &str| key_of(&s.describe(b).unwrap());
        let k0 = key(&base, "b1");
        assert!(is_key(&k0), "{k0}");
        assert_eq!(k0, key(&base, "b1"), "stable");
        assert_ne!(k0, key(&base, "b2"), "the build");
        let variants: Vec<fn(&mut TemplateSpec)> = vec![
            |s| s.cmdline_extra = "x=1".into(),
            |s| s.mem_mib = 256,
            |s| s.vcpus = 2,
            |s| s.pvm_compat = true,
            |s| {
                s.disks.push(TemplateDisk {
                    id: "d".into(),
                    read_only: false,
                    size_bytes: 1 << 20,
                })
            },
            |s| {
                s.shares.push(TemplateShare {
                    tag: "t".into(),
                    read_only: true,
                    mount: None,
                })
            },
            |s| {
                s.shares.push(TemplateShare {
                    tag: "t".into(),
                    read_only: true,
                    mount: Some("/run/t".into()),
                })
            },
        ];
        for f in variants {
            let mut s = base.clone();
            f(&mut s);
            assert_ne!(k0, key(&s, "b1"), "{s:?}");
        }
        // A rebuilt initramfs (a new file at the same path) is a new key.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::remove_file(dir.join("i")).unwrap();
        std::fs::write(dir.join("i"), b"initrd").unwrap();
        assert_ne!(k0, key(&base, "b1"));
        // A missing kernel is an error naming it.
        let mut s = base.clone();
        s.kernel = dir.join("nope");
        let e = s.describe("b1").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_recognised() {
        assert!(is_key(&"a".repeat(32)));
        assert!(!is_key(&"A".repeat(32)));
        assert!(!is_key("../x"));
        assert!(!is_key(&"a".repeat(31)));
    }
}
