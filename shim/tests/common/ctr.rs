//! The containerd end-to-end fixture of the shim's tests: a private
//! containerd with the built shim on its PATH and a husk config of the
//! test's own (repo guest image, shared template store, the pods' run dir
//! under the test's dir), and the checks every test ends with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, Options};

pub const RUNTIME: &str = "io.containerd.husk.v2";

pub fn shim_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn available(test: &str) -> bool {
    if !husk_tests::kvm_available(test) || !Containerd::available(test) {
        return false;
    }
    let (kernel, initrd) = husk_tests::guest_image();
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!("SKIP {test}: guest image not built (bash guest-image/build.sh)");
        return false;
    }
    true
}

/// A husk config for this test: the repo's guest image, templates in a
/// store shared by the shim tests (the first pod pays the cold boot), the
/// pods' directories under the test's own run dir.
pub fn husk_config(name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let dir = husk_tests::temp_path(&format!("shim-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (kernel, initrd) = husk_tests::guest_image();
    let store = husk_tests::oci::target_dir().join("husk-shim-templates");
    let run_dir = dir.join("pods");
    let text = format!(
        "kernel = {:?}\ninitramfs = {:?}\ntemplate_dir = {:?}\nrun_dir = {:?}\nconsole_dir = {:?}\ndebug = true\n{extra}\n",
        kernel, initrd, store, run_dir, dir,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    (path, run_dir)
}

/// The pods' run dir of a test; dropping it removes the test's whole dir
/// (config, consoles), unless `HUSK_KEEP_CONTAINERD` is set.
pub struct RunDir(PathBuf);

impl std::ops::Deref for RunDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("HUSK_KEEP_CONTAINERD").is_none() {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

pub fn containerd(name: &str, extra_config: &str) -> (Containerd, RunDir) {
    let (config, run_dir) = husk_config(name, extra_config);
    let c = Containerd::start_with(
        Options::new()
            .path_dir(shim_dir())
            .env("HUSK_CONFIG", config.to_string_lossy())
            .debug(true),
    )
    .expect("start containerd");
    (c, RunDir(run_dir))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr_ok(["tasks", "ls"]);
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| f.last().map(|s| s.to_string()))?
    })
}

/// Waits (at most `bound`) until task `id` is STOPPED; fails with its
/// status and containerd's log tail otherwise.
pub fn wait_stopped(c: &Containerd, id: &str, bound: Duration) {
    let end = Instant::now() + bound;
    while task_status(c, id).as_deref() != Some("STOPPED") {
        assert!(
            Instant::now() < end,
            "{id} never STOPPED: {:?}\n{}",
            task_status(c, id),
            c.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nothing of the pods is left: no pod directory, no shim, and (the
/// fixture's census) no socket, mount or FIFO.
pub fn assert_clean(c: &Containerd, run_dir: &Path) {
    c.assert_no_leaks(Duration::from_secs(30));
    let left: Vec<_> = std::fs::read_dir(run_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pod directories left: {left:?}");
}

/// `ctr run -d` (the first pod may make the template: a cold boot).
pub fn run_detached(c: &Containerd, args: &[&str]) {
    let mut a = vec!["run", "-d"];
    a.extend_from_slice(args);
    let out = c
        .ctr_timeout(a, Duration::from_secs(300))
        .expect("ctr run -d within 300 s");
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail(60));
}

pub fn run(c: &Containerd, img: &str, id: &str, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, img, id];
    args.extend_from_slice(cmd);
    c.ctr_timeout(args, Duration::from_secs(300))
        .expect("ctr run within 300 s")
}
