//! OCI image-layout tars built locally (no registry is reachable from the
//! test hosts), for `ctr images import`.
//!
//! [`busybox_image`] makes (and caches under the target directory) an image
//! of busybox-static's `/bin/busybox` with every applet linked in `/bin`;
//! [`OciImage`] builds any other single-layer image.
//!
//! ```no_run
//! let tar = husk_tests::oci::busybox_image(husk_tests::oci::BUSYBOX_IMAGE, &["sh"])
//!     .expect("busybox image");
//! // ctr -n NS images import <tar>   (or Containerd::import_busybox)
//! ```

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The name [`busybox_image`] images get by default (the
/// `io.containerd.image.name` annotation, which `ctr images import` uses).
pub const BUSYBOX_IMAGE: &str = "localhost/husk/busybox:latest";

/// Where busybox-static installs its static binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// Bumped when the image layout changes, so cached tars are rebuilt.
const FORMAT_VERSION: &str = "husk-oci-1";

/// One entry of the image's single layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// A single-layer OCI image: its files, and the config's command and env.
#[derive(Debug, Clone)]
pub struct OciImage {
    name: String,
    entries: BTreeMap<String, Entry>,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
}

impl OciImage {
    /// An empty image named `name` (e.g. `localhost/husk/busybox:latest`).
    pub fn new(name: &str) -> Self {
        OciImage {
            name: name.to_string(),
            entries: BTreeMap::new(),
            cmd: Vec::new(),
            entrypoint: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }

    /// Adds directory `path` (and its parents, 0755).
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let p = self.parents(path);
        self.entries.insert(p, Entry::Dir { mode });
        self
    }

    /// Adds regular file `path` with `data`.
    pub fn file(mut self, path: &str, data: Vec<u8>, mode: u32) -> Self {
        let p = self.parents(path);
        self.entries.insert(p, Entry::File { mode, data });
        self
    }

    /// Adds symbolic link `path` → `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let p = self.parents(path);
        self.entries.insert(
            p,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
        self
    }

    /// The config's `Cmd`.
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The config's `Entrypoint`.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds `KEY=value` to the config's `Env` (PATH is set already).
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// Adds host file `path` as it is on this host, at the same path: each
    /// symbolic link met on the way (`/lib` -> `usr/lib`, say) becomes the
    /// same link in the image, then the file it leads to (contents and
    /// permission bits).
    pub fn host_file(mut self, path: &Path) -> io::Result<Self> {
        let mut todo: Vec<std::ffi::OsString> = Vec::new();
        push_components(&mut todo, path);
        let mut at = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                at.pop();
                continue;
            }
            let next = at.join(&name);
            let meta = std::fs::symlink_metadata(&next)?;
            let image_path = next.to_string_lossy().into_owned();
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!(
                        "{}: too many symbolic links",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&next)?;
                let key = image_path.trim_start_matches('/');
                if matches!(self.entries.get(key), Some(Entry::Dir { .. })) {
                    return Err(io::Error::other(format!(
                        "{}: host link {image_path} is a directory of the image",
                        path.display()
                    )));
                }
                self = self.symlink(&image_path, &target.to_string_lossy());
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                push_components(&mut todo, &target);
            } else if todo.is_empty() {
                if !meta.is_file() {
                    return Err(io::Error::other(format!(
                        "{} is not a regular file",
                        next.display()
                    )));
                }
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o7777;
                return Ok(self.file(&image_path, std::fs::read(&next)?, mode));
            } else {
                at = next;
            }
        }
        Err(io::Error::other(format!("{}: not a file", path.display())))
    }

    /// Adds host executable (or shared library) `path` with [`Self::host_file`],
    /// and the shared libraries `ldd` says it loads, the dynamic loader
    /// included.
    pub fn host_binary(mut self, path: &Path) -> io::Result<Self> {
        self = self.host_file(path)?;
        let out = std::process::Command::new("ldd").arg(path).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // A static binary: "not a dynamic executable".
            if text.contains("not a dynamic executable")
                || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            {
                return Ok(self);
            }
            return Err(io::Error::other(format!(
                "ldd {}: {}: {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        for lib in ldd_paths(&text) {
            if !self.entries.contains_key(lib.trim_start_matches('/')) {
                self = self.host_file(Path::new(&lib))?;
            }
        }
        Ok(self)
    }

    /// Normalises `path` (no leading `/`) and adds its missing parents.
    fn parents(&mut self, path: &str) -> String {
        let p = path.trim_matches('/').to_string();
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            let parent = p[..at + i].to_string();
            self.entries
                .entry(parent)
                .or_insert(Entry::Dir { mode: 0o755 });
            at += i + 1;
        }
        p
    }

    /// The layer: an uncompressed tar of the entries, parents first,
    /// deterministic (owner root, mtime 0).
    pub fn layer_tar(&self) -> io::Result<Vec<u8>> {
        let mut t = TarWriter::default();
        for (path, e) in &self.entries {
            match e {
                Entry::Dir { mode } => t.entry(&format!("{path}/"), b'5', *mode, &[], "")?,
                Entry::File { mode, data } => t.entry(path, b'0', *mode, data, "")?,
                Entry::Symlink { target } => t.entry(path, b'2', 0o777, &[], target)?,
            }
        }
        Ok(t.finish())
    }

    /// Writes the image as an OCI image-layout tar (`oci-layout`,
    /// `index.json`, `blobs/sha256/{layer, config, manifest}`) that
    /// `ctr images import` accepts.
    pub fn write_tar(&self, out: &Path) -> io::Result<()> {
        std::fs::write(out, self.layout_tar()?)
    }

    /// The OCI image-layout tar's bytes.
    pub fn layout_tar(&self) -> io::Result<Vec<u8>> {
        let layer = self.layer_tar()?;
        let layer_digest = sha256_hex(&layer);
        let (os, arch) = ("linux", oci_arch());
        let mut config = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": { "Env": self.env, "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        });
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = serde_json::json!(self.cmd);
        }
        if !self.entrypoint.is_empty() {
            config["config"]["Entrypoint"] = serde_json::json!(self.entrypoint);
        }
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config_digest = sha256_hex(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        }))
        .map_err(io::Error::other)?;
        let manifest_digest = sha256_hex(&manifest);
        // The tag part of the name (after the last ':' that follows the last '/').
        let tag = match self.name.rsplit_once(':') {
            Some((_, t)) if !t.contains('/') => t.to_string(),
            _ => "latest".to_string(),
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "platform": { "architecture": arch, "os": os },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))
        .map_err(io::Error::other)?;

        let mut t = TarWriter::default();
        t.entry(
            "oci-layout",
            b'0',
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            "",
        )?;
        t.entry("index.json", b'0', 0o644, &index, "")?;
        t.entry("blobs/", b'5', 0o755, &[], "")?;
        t.entry("blobs/sha256/", b'5', 0o755, &[], "")?;
        for (digest, blob) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            t.entry(&format!("blobs/sha256/{digest}"), b'0', 0o644, blob, "")?;
        }
        Ok(t.finish())
    }
}

/// Pushes `path`'s normal components on `todo` (a stack: the first on top).
fn push_components(todo: &mut Vec<std::ffi::OsString>, path: &Path) {
    use std::path::Component;
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_os_string()),
            Component::ParentDir => todo.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The library paths in `ldd`'s output (`name => /path (addr)`, or
/// `/path (addr)` for the loader); not the vDSO, which has no file.
fn ldd_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = l.split_once("=>").map_or(l, |(_, p)| p).trim();
            let p = p.split(" (").next()?.trim();
            p.starts_with('/').then(|| p.to_string())
        })
        .collect()
}

/// The OCI architecture name of this build's target.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cargo target directory (`CARGO_TARGET_DIR` when set, else
/// `<repo>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"))
}

/// An image of busybox-static: `/bin/busybox` and a `/bin/<applet>` link
/// for every applet of `busybox --list` (sh, echo, cat, sleep, uname, stty,
/// ...), a minimal `/etc/passwd` and `/etc/group` (root, nobody), `/tmp`
/// (1777), `/root`, and mount points `/proc`, `/sys`, `/dev`; config `Cmd`
/// = `cmd`. Returns the OCI tar, cached under `<target>/husk-oci/` keyed by
/// busybox's content, `name` and `cmd` (built once per change).
pub fn busybox_image(name: &str, cmd: &[&str]) -> io::Result<PathBuf> {
    let busybox = read_busybox()?;
    let mut key = Sha256::new();
    key.update(FORMAT_VERSION);
    key.update(&busybox);
    key.update(name);
    for a in cmd {
        key.update([0]);
        key.update(a);
    }
    let key: String = key.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = target_dir().join("husk-oci");
    let out = dir.join(format!("busybox-{key}.tar"));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir)?;
    let img = busybox_with(name, cmd, busybox)?;
    // Written aside and renamed: concurrent tests never see half a tar.
    // The aside name is unique per writer, not per process: the tests of
    // one binary are threads of one process, and two of them renaming the
    // same aside file made the second rename fail with ENOENT.
    static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".busybox-{key}.{}-{n}.tmp", std::process::id()));
    let with_path = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    img.write_tar(&tmp)
        .map_err(|e| with_path("write", &tmp, e))?;
    std::fs::rename(&tmp, &out).map_err(|e| with_path("rename", &tmp, e))?;
    Ok(out)
}

/// The image [`busybox_image`] writes, before it is written (busybox and
/// its applet links, `/etc/passwd`, `/etc/group`, `/tmp`, `/root`,
/// `/proc`, `/sys`, `/dev`; `Cmd` = `cmd`), for tests that add their own
/// files to it.
pub fn busybox_base(name: &str, cmd: &[&str]) -> io::Result<OciImage> {
    busybox_with(name, cmd, read_busybox()?)
}

/// busybox-static's binary.
fn read_busybox() -> io::Result<Vec<u8>> {
    std::fs::read(BUSYBOX_BINARY).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{BUSYBOX_BINARY}: {e} (apt-get install busybox-static)"),
        )
    })
}

/// [`busybox_base`] with `busybox`, the binary's bytes.
fn busybox_with(name: &str, cmd: &[&str], busybox: Vec<u8>) -> io::Result<OciImage> {
    let list = std::process::Command::new(BUSYBOX_BINARY)
        .arg("--list")
        .output()?;
    if !list.status.success() {
        return Err(io::Error::other(format!(
            "{BUSYBOX_BINARY} --list: {}",
            list.status
        )));
    }
    let mut img = OciImage::new(name)
        .cmd(cmd)
        .file("bin/busybox", busybox, 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
            0o644,
        )
        .file(
            "etc/group",
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        )
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755);
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            img = img.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    Ok(img)
}

/// A minimal ustar writer (regular files, directories, symlinks).
#[derive(Default)]
struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    fn entry(
        &mut self,
        path: &str,
        kind: u8,
        mode: u32,
        data: &[u8],
        link: &str,
    ) -> io::Result<()> {
        let mut h = [0u8; 512];
        // Long names go in `prefix` (155) + `name` (100), split at a '/'.
        let (prefix, name) = if path.len() <= 100 {
            ("", path)
        } else {
            let cut = path[..path.len().min(156)]
                .rfind('/')
                .filter(|&i| path.len() - i - 1 <= 100 && i <= 155)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("tar path too long: {path}"),
                    )
                })?;
            (&path[..cut], &path[cut + 1..])
        };
        if link.len() > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("symlink target too long: {link}"),
            ));
        }
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[148..156].fill(b' ');
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.resize(self.out.len() + pad, 0);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// `value` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let s = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f48)\n\
                   \tlibgone.so.1 => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f48e40bf000)\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn host_files_keep_their_links() {
        let dir = std::env::temp_dir().join(format!("husk-oci-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/sub")).unwrap();
        std::fs::write(dir.join("real/sub/f"), b"data").unwrap();
        std::os::unix::fs::symlink("real", dir.join("alias")).unwrap();
        std::os::unix::fs::symlink("sub/../sub/f", dir.join("real/f-link")).unwrap();
        let img = OciImage::new("x/y:z")
            .host_file(&dir.join("alias/f-link"))
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let d = dir.to_string_lossy().trim_start_matches('/').to_string();
        assert_eq!(
            img.entries.get(&format!("{d}/alias")),
            Some(&Entry::Symlink {
                target: "real".into()
            })
        );
        assert_eq!(
            img.entries.get(&format!("{d}/real/f-link")),
            Some(&Entry::Symlink {
                target: "sub/../sub/f".into()
            })
        );
        assert!(matches!(
            img.entries.get(&format!("{d}/real/sub/f")),
            Some(Entry::File { data, .. }) if data == b"data"
        ));
    }

    #[test]
    fn tar_headers_have_valid_checksums_and_parents_first() {
        let img = OciImage::new("x/y:z")
            .file("a/b/c", b"hello".to_vec(), 0o644)
            .symlink("a/l", "b/c");
        let tar = img.layer_tar().expect("layer");
        let mut names = Vec::new();
        let mut at = 0;
        while tar[at] != 0 {
            let h = &tar[at..at + 512];
            let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).expect("utf8"), 8)
                .expect("octal");
            let sum: u32 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u32
                    }
                })
                .sum();
            assert_eq!(stored, sum);
            let name = String::from_utf8_lossy(&h[..100])
                .trim_end_matches('\0')
                .to_string();
            let size = u64::from_str_radix(std::str::from_utf8(&h[124..135]).expect("utf8"), 8)
                .expect("size") as usize;
            names.push(name);
            at += 512 + size.div_ceil(512) * 512;
        }
        assert_eq!(names, ["a/", "a/b/", "a/b/c", "a/l"]);
        assert_eq!(tar.len(), at + 1024);
    }
}
