//! `husk install`: puts containerd-shim-husk-v2 where containerd finds it
//! (a directory on its PATH), the guest kernel and initramfs where the
//! shim's config names them, writes `/etc/husk/config.toml` when there is
//! none, and prints the containerd config snippet.

use std::path::{Path, PathBuf};

use crate::shim_v2::config::Config;

/// The shim binary's name (containerd derives it from the runtime type
/// `io.containerd.husk.v2`).
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where the shim binary goes (a directory on containerd's PATH).
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Where the guest kernel and initramfs go.
    #[arg(long, default_value = "/usr/share/husk")]
    pub share_dir: PathBuf,
    /// The config file to write when it does not exist.
    #[arg(long, default_value = crate::shim_v2::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The shim binary to install (default: beside this husk binary).
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// The guest kernel (default: guest-image/vmlinux beside the binary's
    /// directory, as `husk run`).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The guest initramfs (default: as --kernel, initramfs.cpio.gz).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {problem}", path.display())]
pub struct InstallError {
    what: &'static str,
    path: PathBuf,
    problem: String,
}

fn beside_exe(rel: &str) -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(|e| InstallError {
        what: "this binary",
        path: PathBuf::from("/proc/self/exe"),
        problem: e.to_string(),
    })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(match rel.strip_prefix("../") {
        Some(r) => dir.parent().unwrap_or(Path::new("/")).join(r),
        None => dir.join(rel),
    })
}

/// Copies `from` to `to` through a temporary file and a rename (a running
/// shim keeps its old binary), with `mode`.
fn install_file(what: &'static str, from: &Path, to: &Path, mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |path: &Path, e: std::io::Error| InstallError {
        what,
        path: path.to_owned(),
        problem: e.to_string(),
    };
    if !from.is_file() {
        return Err(InstallError {
            what,
            path: from.to_owned(),
            problem: "no such file (build it: `cargo build --release -p husk-shim`, `bash guest-image/build.sh`)".into(),
        });
    }
    let dir = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        to.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::copy(from, &tmp).map_err(|e| err(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(to, e)
    })
}

/// The config written on first install: the defaults, with the installed
/// guest image, each key documented.
pub fn default_config_text(kernel: &Path, initramfs: &Path) -> String {
    let d = Config::default();
    format!(
        "# husk: what every pod VM gets (containerd-shim-husk-v2 reads this file;\n\
         # HUSK_CONFIG names another). Every key is optional.\n\
         \n\
         # The guest kernel and initramfs.\n\
         kernel = {kernel:?}\n\
         initramfs = {initramfs:?}\n\
         # The VM's size when no container limit asks for more.\n\
         vcpus = {vcpus}\n\
         memory_mib = {mem}\n\
         # Added to a first container's memory limit when the VM is sized from it.\n\
         memory_overhead_mib = {over}\n\
         # Pods start from templates (one per VM shape; the first pod of a shape\n\
         # boots cold and makes it).\n\
         templates = {templates}\n\
         template_dir = {tdir:?}\n\
         # Per-pod sockets and the virtio-fs share's mounts.\n\
         run_dir = {rdir:?}\n\
         # Each pod's guest console to <console_dir>/<pod>.log (unset: the shim's log).\n\
         # console_dir = \"/var/log/husk\"\n\
         debug = {debug}\n\
         agent_timeout_s = {at}\n\
         boot_timeout_s = {bt}\n\
         # Pod annotations io.husk.config.<key> may override these keys.\n\
         enable_annotations = {ann:?}\n",
        vcpus = d.vcpus,
        mem = d.memory_mib,
        over = d.memory_overhead_mib,
        templates = d.templates,
        tdir = d.template_dir,
        rdir = d.run_dir,
        debug = d.debug,
        at = d.agent_timeout_s,
        bt = d.boot_timeout_s,
        ann = d.enable_annotations,
    )
}

/// The containerd 1.6 config snippet for the husk runtime.
pub fn containerd_snippet() -> &'static str {
    r#"# containerd config.toml (version 2): the CRI runtime handler "husk"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
  runtime_type = "io.containerd.husk.v2"
  # Per-pod overrides (io.husk.config.memory_mib, ...) reach the shim.
  pod_annotations = ["io.husk.config.*"]
# Then restart containerd. Without CRI: ctr run --runtime io.containerd.husk.v2 IMAGE ID CMD"#
}

pub fn run(args: &InstallArgs) -> i32 {
    match install(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk install: {e}");
            super::exit_code::ERROR
        }
    }
}

fn install(args: &InstallArgs) -> Result<(), InstallError> {
    let shim = match &args.shim {
        Some(s) => s.clone(),
        None => beside_exe(SHIM_BINARY)?,
    };
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => beside_exe("../guest-image/vmlinux")?,
    };
    let initrd = match &args.initrd {
        Some(i) => i.clone(),
        None => beside_exe("../guest-image/initramfs.cpio.gz")?,
    };
    let shim_to = args.bin_dir.join(SHIM_BINARY);
    let kernel_to = args.share_dir.join("vmlinux");
    let initrd_to = args.share_dir.join("initramfs.cpio.gz");
    install_file("the shim", &shim, &shim_to, 0o755)?;
    println!("installed {}", shim_to.display());
    install_file("the guest kernel", &kernel, &kernel_to, 0o644)?;
    install_file("the guest initramfs", &initrd, &initrd_to, 0o644)?;
    println!(
        "installed {} and {}",
        kernel_to.display(),
        initrd_to.display()
    );
    if args.config.exists() {
        // Someone's settings: kept; say whether they name this image.
        match Config::from_file(&args.config) {
            Ok(c) if c.kernel == kernel_to && c.initramfs == initrd_to => {
                println!(
                    "kept {} (it names the installed image)",
                    args.config.display()
                )
            }
            Ok(_) => println!(
                "kept {}: its kernel/initramfs are not the ones just installed",
                args.config.display()
            ),
            Err(e) => {
                return Err(InstallError {
                    what: "the existing config",
                    path: args.config.clone(),
                    problem: e.to_string(),
                })
            }
        }
    } else {
        let text = default_config_text(&kernel_to, &initrd_to);
        let dir = args.config.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&args.config, text))
            .map_err(|e| InstallError {
                what: "the config",
                path: args.config.clone(),
                problem: e.to_string(),
            })?;
        println!("wrote {}", args.config.display());
    }
    println!("\n{}", containerd_snippet());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The written config parses back to the defaults, with the image.
    #[test]
    fn default_config_round_trips() {
        let text = default_config_text(Path::new("/a/vmlinux"), Path::new("/a/initrd"));
        let c = Config::parse(&text, Path::new("x")).unwrap();
        assert_eq!(c.kernel, Path::new("/a/vmlinux"));
        assert_eq!(
            Config {
                kernel: Config::default().kernel,
                initramfs: Config::default().initramfs,
                ..c
            },
            Config::default()
        );
    }

    #[test]
    fn installs_into_a_prefix() {
        let d = std::env::temp_dir().join(format!("husk-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["shim", "k", "i"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        let args = InstallArgs {
            bin_dir: d.join("bin"),
            share_dir: d.join("share"),
            config: d.join("etc/config.toml"),
            shim: Some(d.join("shim")),
            kernel: Some(d.join("k")),
            initrd: Some(d.join("i")),
        };
        install(&args).unwrap();
        assert!(d.join("bin").join(SHIM_BINARY).is_file());
        let c = Config::from_file(&d.join("etc/config.toml")).unwrap();
        assert_eq!(c.kernel, d.join("share/vmlinux"));
        // Twice: the config is kept.
        install(&args).unwrap();
        let missing = InstallArgs {
            shim: Some(d.join("nope")),
            ..args
        };
        let e = install(&missing).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
