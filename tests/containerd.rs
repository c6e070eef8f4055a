//! A real containerd for end-to-end tests of shims (runc's today, husk's
//! `containerd-shim-husk-v2` next), with no effect on the host's own
//! containerd and nothing left behind.
//!
//! ```no_run
//! use husk_tests::containerd::{Containerd, Options};
//! # fn t() {
//! if !Containerd::available("my_test") {
//!     return; // prints "SKIP my_test: containerd not installed ..." or "... not root"
//! }
//! // Own root, state, gRPC and ttrpc sockets under a fresh temp dir, its own
//! // namespace; CRI off. `path_dir` puts a directory first on containerd's
//! // PATH, where it finds `containerd-shim-<name>-v2` for `--runtime
//! // io.containerd.<name>.v2` (restart containerd after rebuilding a shim:
//! // it caches the path).
//! let c = Containerd::start_with(Options::new().path_dir(husk_tests::oci::target_dir().join("debug")))
//!     .expect("containerd");
//! let image = c.import_busybox().expect("import busybox");
//! let out = c.ctr(["run", "--rm", &image, "c1", "echo", "hello"]); // killed after 30 s
//! assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
//! c.assert_no_leaks(std::time::Duration::from_secs(5)); // shims, mounts, sockets, fifos, cgroups
//! # }
//! // Drop: SIGKILLs the fixture's shims and containers and containerd,
//! // unmounts, removes its dirs, sockets and runc state.
//! ```
//!
//! - `ctr` runs as `ctr --address SOCK -n NS ARGS` with a timeout; for
//!   `run`, `task start` and `task exec` it adds `--fifo-dir` (the fixture's
//!   own, which the leak census watches) unless ARGS name one.
//! - [`Containerd::ctr_command`] gives the same command line unspawned, e.g.
//!   for [`crate::pty::Pty`] (`ctr run -t` needs a terminal).
//! - CRI: `Options::cri(true)` plus TOML from [`cri_config`] (or your own
//!   `[plugins."io.containerd.grpc.v1.cri"]` table via `Options::config`).
//! - containerd dies with the thread that started it (PR_SET_PDEATHSIG), so
//!   an interrupted test run leaves no daemon; start one per test.
//! - `HUSK_KEEP_CONTAINERD=1` keeps the work dir (config, containerd.log)
//!   for a post-mortem; its log's tail is printed when a test panics.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long [`Containerd::ctr`] lets one `ctr` command run.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the v2 shims (runc's, and husk's per containerd's convention)
/// put their task sockets; not configurable in containerd 1.6.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// runc's state root under containerd's runc shim (one dir per namespace).
pub const RUNC_STATE_DIR: &str = "/run/containerd/runc";

/// The namespace of the CRI plugin (fixed in containerd 1.6): shared by
/// every containerd with CRI on the host, so a fixture in it counts and
/// cleans only its own runc state, and leaves the `k8s.io` cgroups alone
/// (CRI pods go under their own `cgroup_parent`; see [`crate::cri`]).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Prefix of fixture work dirs in the temp dir (`<prefix><pid>-<n>`).
const WORK_PREFIX: &str = "husk-ctrd-";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The full path of `name` on PATH, if any.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How to start containerd.
#[derive(Debug, Clone, Default)]
pub struct Options {
    path_dirs: Vec<PathBuf>,
    extra_toml: String,
    cri: bool,
    namespace: Option<String>,
    debug: bool,
    env: Vec<(String, String)>,
}

impl Options {
    /// CRI off, default namespace (unique per fixture), info logging.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `dir` before the inherited PATH of containerd (and so of the
    /// shims it starts): where `containerd-shim-<name>-v2` is found.
    pub fn path_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.path_dirs.push(dir.into());
        self
    }

    /// Appends `toml` to containerd's config (version 2). Tables only: the
    /// fixture's top-level keys (root, state, disabled_plugins) come first.
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// Loads the CRI plugin (off by default: it is slow to start and wants
    /// a CNI setup); see [`cri_config`].
    pub fn cri(mut self, enabled: bool) -> Self {
        self.cri = enabled;
        self
    }

    /// The containerd namespace `ctr` uses (default `husk-<pid>-<n>`).
    /// Keep it unique: runc state and cgroups are per namespace, and the
    /// fixture removes them.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }

    /// Sets `key=value` in containerd's environment (and so its shims':
    /// e.g. `HUSK_CONFIG`).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// containerd logs at debug level (shim start/delete calls, ttrpc).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

/// The CRI plugin's table for a runtime handler `handler` whose shim is
/// the binary `shim` (an absolute path as `runtime_type` works in 1.6.20,
/// where `runtime_path` is ignored for pods), with
/// `restrict_oom_score_adj = true` (root on these VMs may not lower
/// oom_score_adj), Debian's CNI plugins, all pod annotations passed
/// through, and `sandbox_image` (import it first). Use with
/// `Options::new().cri(true).config(&cri_config(..))`. The handler `runc`
/// (containerd's runc shim, `shim` unused) is always there.
pub fn cri_config(handler: &str, shim: &Path, sandbox_image: &str, cni_conf_dir: &Path) -> String {
    let handler_table = if handler == "runc" {
        String::new()
    } else {
        format!(
            r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}]
      runtime_type = {shim}
      pod_annotations = ["*", "*/*"]
      container_annotations = ["*", "*/*"]
"#,
            handler = toml_str(handler),
            shim = toml_str(&shim.to_string_lossy()),
        )
    };
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = {image}
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{handler_table}"#,
        image = toml_str(sandbox_image),
        cni = toml_str(&cni_conf_dir.to_string_lossy()),
    )
}

/// `s` as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A containerd daemon of this test: its own root, state, sockets,
/// namespace and work dir. See the module docs.
pub struct Containerd {
    work: PathBuf,
    address: PathBuf,
    namespace: String,
    child: Option<Child>,
    /// /run/containerd/s entries that existed before this containerd.
    sockets_before: Vec<String>,
    /// containerd's PATH and extra environment (for a restart).
    path_env: OsString,
    env: Vec<(String, String)>,
}

impl Containerd {
    /// True when this host can run the containerd tests (root, containerd
    /// and ctr installed); otherwise prints why `test` is skipped.
    pub fn available(test: &str) -> bool {
        for bin in ["containerd", "ctr"] {
            if find_in_path(bin).is_none() {
                eprintln!(
                    "SKIP {test}: {bin}: containerd not installed \
                     (apt-get install containerd runc containernetworking-plugins)"
                );
                return false;
            }
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {test}: containerd tests need root");
            return false;
        }
        true
    }

    /// Starts containerd with the default [`Options`].
    pub fn start() -> io::Result<Containerd> {
        Self::start_with(Options::new())
    }

    /// Starts containerd and waits until `ctr version` answers (20 s at
    /// most).
    pub fn start_with(opts: Options) -> io::Result<Containerd> {
        reap_stale_fixtures();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let work = std::env::temp_dir().join(format!("{WORK_PREFIX}{pid}-{n}"));
        if work.exists() {
            cleanup_mounts_under(&work);
            std::fs::remove_dir_all(&work)?;
        }
        for d in ["root", "state", "fifo", "opt"] {
            std::fs::create_dir_all(work.join(d))?;
        }
        let address = work.join("containerd.sock");
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| format!("husk-{pid}-{n}"));
        let mut disabled = vec![
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.tracing.processor.v1.otlp",
        ];
        if !opts.cri {
            disabled.push("io.containerd.grpc.v1.cri");
        }
        let disabled: Vec<String> = disabled.iter().map(|s| toml_str(s)).collect();
        let config = format!(
            r#"version = 2
root = {root}
state = {state}
disabled_plugins = [{disabled}]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  level = {level}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

{extra}"#,
            root = toml_str(&work.join("root").to_string_lossy()),
            state = toml_str(&work.join("state").to_string_lossy()),
            disabled = disabled.join(", "),
            grpc = toml_str(&address.to_string_lossy()),
            ttrpc = toml_str(&format!("{}.ttrpc", address.display())),
            level = toml_str(if opts.debug { "debug" } else { "info" }),
            opt = toml_str(&work.join("opt").to_string_lossy()),
            extra = opts.extra_toml,
        );
        let config_path = work.join("config.toml");
        std::fs::write(&config_path, config)?;

        let mut path: Vec<PathBuf> = opts.path_dirs.clone();
        if let Some(p) = std::env::var_os("PATH") {
            path.extend(std::env::split_paths(&p));
        }
        let path = std::env::join_paths(path).map_err(io::Error::other)?;
        std::fs::File::create(work.join("containerd.log"))?;
        let sockets_before = list_dir(Path::new(SHIM_SOCKET_DIR));
        let mut c = Containerd {
            work,
            address,
            namespace,
            child: None,
            sockets_before,
            path_env: path,
            env: opts.env.clone(),
        };
        c.child = Some(c.spawn()?);
        c.wait_ready(Duration::from_secs(20))?;
        Ok(c)
    }

    /// Starts the daemon with this fixture's config (its log appended to).
    fn spawn(&self) -> io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.work.join("containerd.log"))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.work.join("config.toml"))
            .current_dir(&self.work)
            .env("PATH", &self.path_env)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: between fork and exec the closure only makes
        // async-signal-safe calls (setsid, prctl, syscall, fcntl).
        unsafe {
            cmd.pre_exec(|| {
                // Its own session: the test's terminal signals do not reach it.
                libc::setsid();
                // Dies with the thread that started it (a killed test run).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Every inherited descriptor above stderr closes at exec
                // (the test harness's pipes, other tests' sockets): the
                // daemon and its shims would otherwise hold them open.
                // CLOEXEC rather than close: std's exec-error pipe stays.
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                    for fd in 3..4096 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawning containerd: {e}")))?;
        Ok(child)
    }

    /// Stops containerd (SIGTERM; its shims keep running, as in a
    /// production restart) and starts it again on the same root, state and
    /// sockets; returns once `ctr version` answers.
    pub fn restart(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() >= end {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.child = Some(self.spawn()?);
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "containerd exited ({status}) while starting; log:\n{}",
                        self.log_tail(40)
                    )));
                }
            }
            if self.address.exists() {
                let out = self.ctr_timeout(["version"], Duration::from_secs(5));
                if matches!(&out, Ok(o) if o.status.success()) {
                    return Ok(());
                }
            }
            if Instant::now() >= end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "containerd did not answer `ctr version` in {timeout:?}; log:\n{}",
                        self.log_tail(40)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The namespace `ctr` uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The work dir (config.toml, containerd.log, root/, state/, fifo/).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// containerd's state dir (bundles under
    /// `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state_dir(&self) -> PathBuf {
        self.work.join("state")
    }

    /// The dir `ctr` puts its stdio FIFOs in (see the module docs).
    pub fn fifo_dir(&self) -> PathBuf {
        self.work.join("fifo")
    }

    /// containerd's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.work.join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `ctr --address SOCK -n NS` + `args` (with `--fifo-dir`, see the
    /// module docs), as arguments.
    pub fn ctr_args<I, S>(&self, args: I) -> Vec<OsString>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        let has_fifo_dir = args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--fifo-dir"));
        let first: Vec<String> = args
            .iter()
            .take(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        let at = match first.as_slice() {
            ["run", ..] => Some(1),
            ["task" | "tasks" | "t", "start" | "exec", ..] => Some(2),
            _ => None,
        };
        if let (Some(at), false) = (at, has_fifo_dir) {
            args.splice(
                at..at,
                ["--fifo-dir".into(), self.fifo_dir().into_os_string()],
            );
        }
        let mut all: Vec<OsString> = vec![
            "--address".into(),
            self.address.clone().into_os_string(),
            "-n".into(),
            self.namespace.clone().into(),
        ];
        all.extend(args);
        all
    }

    /// The `ctr` command for `args`, not started (stdin, stdout and stderr
    /// are the caller's to set).
    pub fn ctr_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ctr");
        cmd.args(self.ctr_args(args));
        cmd
    }

    /// Runs `ctr ... args` (stdin empty) and returns its output; panics
    /// when it cannot start or runs past [`CTR_TIMEOUT`] (then it is
    /// killed: a hung ctr fails the test instead of hanging CI).
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        match self.ctr_timeout(&args, CTR_TIMEOUT) {
            Ok(o) => o,
            Err(e) => panic!("ctr {args:?}: {e}\ncontainerd log:\n{}", self.log_tail(30)),
        }
    }

    /// [`Self::ctr`], asserting success; returns stdout.
    pub fn ctr_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ctr ... args` with stdin empty, killing it after `timeout`
    /// (an error of kind `TimedOut` carrying its output so far).
    pub fn ctr_timeout<I, S>(&self, args: I, timeout: Duration) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_timeout(self.ctr_command(args), None, timeout)
    }

    /// Imports the OCI image-layout tar `tar` (`ctr images import`).
    pub fn import_image(&self, tar: &Path) -> io::Result<()> {
        let out = self.ctr_timeout(
            [OsStr::new("images"), OsStr::new("import"), tar.as_os_str()],
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ctr images import {}: {}: {}",
                tar.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Imports the busybox image ([`crate::oci::busybox_image`], `Cmd`
    /// `sh`) and returns its name ([`crate::oci::BUSYBOX_IMAGE`]).
    pub fn import_busybox(&self) -> io::Result<String> {
        let tar = crate::oci::busybox_image(crate::oci::BUSYBOX_IMAGE, &["sh"])?;
        self.import_image(&tar)?;
        Ok(crate::oci::BUSYBOX_IMAGE.to_string())
    }

    /// What this fixture's containers might leave behind, now: see
    /// [`Leaks`].
    pub fn leaks(&self) -> Leaks {
        let mut l = Leaks {
            shims: self
                .shim_pids()
                .into_iter()
                .map(|p| format!("{p} {}", cmdline(p).join(" ")))
                .collect(),
            mounts: mounts_under(&self.work),
            sockets: self.own_shim_sockets(),
            fifos: list_tree(&self.fifo_dir()),
            bundles: list_dir(
                &self
                    .state_dir()
                    .join("io.containerd.runtime.v2.task")
                    .join(&self.namespace),
            ),
            runc_state: own_runc_state(&self.work, &self.namespace),
            cgroups: namespace_cgroup_dirs(&self.namespace)
                .into_iter()
                .flat_map(|d| {
                    list_dir(&d)
                        .into_iter()
                        .map(|e| d.join(e))
                        .filter(|p| p.is_dir())
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                })
                .collect(),
            ..Leaks::default()
        };
        let words = |args: &[&str]| -> Vec<String> {
            match self.ctr_timeout(args, Duration::from_secs(10)) {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                Ok(o) => vec![format!(
                    "(ctr {args:?}: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                )],
                Err(e) => vec![format!("(ctr {args:?}: {e})")],
            }
        };
        l.tasks = words(&["tasks", "ls", "-q"]);
        l.containers = words(&["containers", "ls", "-q"]);
        l
    }

    /// Waits up to `timeout` for [`Self::leaks`] to be empty (a shim exits
    /// a moment after its last delete); returns the last census when not.
    pub fn wait_no_leaks(&self, timeout: Duration) -> Result<(), Box<Leaks>> {
        let end = Instant::now() + timeout;
        loop {
            let l = self.leaks();
            if l.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(Box::new(l));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the census when something is still left after
    /// `timeout`.
    pub fn assert_no_leaks(&self, timeout: Duration) {
        if let Err(l) = self.wait_no_leaks(timeout) {
            panic!(
                "left behind after {timeout:?}:\n{l}\ncontainerd log:\n{}",
                self.log_tail(30)
            );
        }
    }

    /// The task socket a v2 shim using containerd's convention (runc's,
    /// the containerd-shim crate's) listens on for grouping `id` (the
    /// container id, or the pod's sandbox id):
    /// `/run/containerd/s/<sha256(address/ns/id)>`.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        shim_socket(&self.address, &self.namespace, id)
    }

    /// Shim processes started by this containerd (their `-address` is its
    /// socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        processes_with_address(&self.address.to_string_lossy())
    }

    /// /run/containerd/s entries that appeared since this containerd
    /// started and that no other containerd's shim listens on.
    fn own_shim_sockets(&self) -> Vec<String> {
        let new: Vec<String> = list_dir(Path::new(SHIM_SOCKET_DIR))
            .into_iter()
            .filter(|e| !self.sockets_before.contains(e))
            .collect();
        if new.is_empty() {
            return new;
        }
        let ours = self.address.to_string_lossy().into_owned();
        let listeners = socket_listeners(SHIM_SOCKET_DIR);
        new.into_iter()
            .filter(|e| {
                let path = format!("{SHIM_SOCKET_DIR}/{e}");
                // A foreign shim: one whose -address is another socket.
                !listeners
                    .iter()
                    .any(|(p, pid)| p == &path && address_of(*pid).is_some_and(|a| a != ours))
            })
            .map(|e| format!("{SHIM_SOCKET_DIR}/{e}"))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "containerd ({}) log tail:\n{}",
                self.work.display(),
                self.log_tail(60)
            );
        }
        // Shims first: a dead containerd cannot delete them.
        for pid in self.shim_pids() {
            kill(pid, libc::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            kill(child.id(), libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Containers whose shim died: their processes are in the
        // namespace's cgroups.
        if self.namespace != CRI_NAMESPACE {
            remove_cgroups(&self.namespace);
        }
        let sockets = self.own_shim_sockets();
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        remove_runc_state(&self.work, &self.namespace);
        cleanup_mounts_under(&self.work);
        if std::env::var_os("HUSK_KEEP_CONTAINERD").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// What containerd-run containers may leave behind; all empty after a
/// clean test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    /// Shim processes of this containerd (`pid cmdline`).
    pub shims: Vec<String>,
    /// Mount points under the fixture's work dir (rootfs mounts).
    pub mounts: Vec<String>,
    /// New /run/containerd/s sockets not owned by another containerd.
    pub sockets: Vec<String>,
    /// Entries under the fixture's FIFO dir.
    pub fifos: Vec<String>,
    /// Task bundles in containerd's state dir for the namespace.
    pub bundles: Vec<String>,
    /// runc state under /run/containerd/runc/<ns>.
    pub runc_state: Vec<String>,
    /// Container cgroups under /sys/fs/cgroup/*/<ns>.
    pub cgroups: Vec<String>,
    /// `ctr tasks ls -q`.
    pub tasks: Vec<String>,
    /// `ctr containers ls -q`.
    pub containers: Vec<String>,
}

impl Leaks {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty())
    }

    fn fields(&self) -> [(&'static str, &Vec<String>); 9] {
        [
            ("shims", &self.shims),
            ("mounts", &self.mounts),
            ("sockets", &self.sockets),
            ("fifos", &self.fifos),
            ("bundles", &self.bundles),
            ("runc_state", &self.runc_state),
            ("cgroups", &self.cgroups),
            ("tasks", &self.tasks),
            ("containers", &self.containers),
        ]
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, v) in self.fields() {
            if !v.is_empty() {
                writeln!(f, "  {name}: {v:?}")?;
            }
        }
        Ok(())
    }
}

/// Runs `cmd` with `input` on its stdin (or an empty stdin), collecting
/// stdout and stderr; kills it after `timeout` (an error of kind
/// `TimedOut` with the output so far).
pub fn run_timeout(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawning {:?}: {e}", cmd.get_program())))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out_t = reader(child.stdout.take().map(|r| Box::new(r) as _));
    let err_t = reader(child.stderr.take().map(|r| Box::new(r) as _));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{:?} did not finish in {timeout:?} (killed); stdout: {:?}; stderr: {:?}",
                cmd.get_args().collect::<Vec<_>>(),
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

/// See [`Containerd::shim_socket`].
fn shim_socket(address: &Path, namespace: &str, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = format!("{}/{namespace}/{id}", address.display());
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Path::new(SHIM_SOCKET_DIR).join(hex)
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Sorted names in `dir` (empty when it is absent).
pub(crate) fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every path under `dir`, relative, sorted.
fn list_tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in list_dir(&dir.join(&rel)) {
            let r = rel.join(&e);
            if dir.join(&r).is_dir() {
                stack.push(r.clone());
            }
            out.push(r.display().to_string());
        }
    }
    out.sort();
    out
}

/// A process's argv (empty when it is gone).
/// A process's argv (empty when it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a process's `-address` argument (shims get containerd's
/// socket there).
fn address_of(pid: u32) -> Option<String> {
    let argv = cmdline(pid);
    argv.iter()
        // Exactly `-address`, as containerd passes it (not ctr's `--address`).
        .position(|a| a == "-address")
        .and_then(|i| argv.get(i + 1).cloned())
}

/// Every pid in /proc now.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes other than containerd itself whose `-address` is `address`.
fn processes_with_address(address: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| address_of(p).as_deref() == Some(address))
        .collect()
}

/// (socket path, listening pid) for the Unix sockets bound under `dir`
/// that a process holding an `-address` argument (a shim) has open.
fn socket_listeners(dir: &str) -> Vec<(String, u32)> {
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let inodes: Vec<(String, String)> = unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(7)?;
            path.starts_with(dir).then(|| {
                (
                    format!("socket:[{}]", f.get(6).unwrap_or(&"")),
                    path.to_string(),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
    for pid in all_pids() {
        if address_of(pid).is_none() {
            continue;
        }
        for fd in list_dir(Path::new(&format!("/proc/{pid}/fd"))) {
            if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
                let t = target.to_string_lossy();
                if let Some((_, path)) = inodes.iter().find(|(i, _)| *i == t) {
                    out.push((path.clone(), pid));
                }
            }
        }
    }
    out
}

/// Mount points under `dir` in this mount namespace, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount)
        .filter(|m| m.starts_with(&prefix))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], oct) {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount under `dir`, deepest first.
fn cleanup_mounts_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid NUL-terminated path; umount2 has no other
                // preconditions.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// The namespace's cgroup dirs (one per v1 hierarchy, or the v2 one):
/// `ctr` puts containers at `/<ns>/<id>`.
pub(crate) fn cgroup_dirs(namespace: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut v = Vec::new();
    let direct = root.join(namespace);
    if direct.is_dir() {
        v.push(direct);
    }
    for h in list_dir(root) {
        let d = root.join(&h).join(namespace);
        if d.is_dir() && !v.contains(&d) {
            v.push(d);
        }
    }
    v
}

/// [`cgroup_dirs`] of a fixture's own namespace; none for
/// [`CRI_NAMESPACE`], which is not the fixture's alone.
fn namespace_cgroup_dirs(namespace: &str) -> Vec<PathBuf> {
    if namespace == CRI_NAMESPACE {
        return Vec::new();
    }
    cgroup_dirs(namespace)
}

/// runc's state entries (container ids) under
/// `/run/containerd/runc/<namespace>` that belong to the containerd whose
/// work dir is `work`: all of them in a fixture's own namespace; in
/// [`CRI_NAMESPACE`] those whose `state.json` names a path under `work`
/// (the bundle's rootfs).
fn own_runc_state(work: &Path, namespace: &str) -> Vec<String> {
    let dir = Path::new(RUNC_STATE_DIR).join(namespace);
    let all = list_dir(&dir);
    if namespace != CRI_NAMESPACE {
        return all;
    }
    let needle = format!("{}/", work.display());
    all.into_iter()
        .filter(|id| {
            std::fs::read_to_string(dir.join(id).join("state.json"))
                .is_ok_and(|s| s.contains(&needle))
        })
        .collect()
}

/// Removes [`own_runc_state`], and the namespace's dir once it is empty.
fn remove_runc_state(work: &Path, namespace: &str) {
    let dir = Path::new(RUNC_STATE_DIR).join(namespace);
    if namespace != CRI_NAMESPACE {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    for id in own_runc_state(work, namespace) {
        let _ = std::fs::remove_dir_all(dir.join(id));
    }
    let _ = std::fs::remove_dir(&dir);
}

/// Kills every process in the namespace's cgroups and removes them.
pub(crate) fn remove_cgroups(namespace: &str) {
    for _ in 0..20 {
        let dirs = cgroup_dirs(namespace);
        if dirs.is_empty() {
            return;
        }
        let mut all: Vec<PathBuf> = Vec::new();
        for d in dirs {
            let mut stack = vec![d];
            while let Some(d) = stack.pop() {
                for e in list_dir(&d) {
                    let p = d.join(&e);
                    if p.is_dir() {
                        stack.push(p);
                    }
                }
                all.push(d);
            }
        }
        for d in &all {
            for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
            {
                kill(pid, libc::SIGKILL);
            }
        }
        // Deepest first.
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut left = false;
        for d in &all {
            left |= std::fs::remove_dir(d).is_err();
        }
        if !left {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cleans the work dirs of fixtures whose test process is gone (a killed
/// run): their shims, containerd, mounts, runc state, cgroups.
fn reap_stale_fixtures() {
    let tmp = std::env::temp_dir();
    for name in list_dir(&tmp) {
        let Some(rest) = name.strip_prefix(WORK_PREFIX) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let work = tmp.join(&name);
        let address = work.join("containerd.sock").to_string_lossy().into_owned();
        for p in processes_with_address(&address) {
            kill(p, libc::SIGKILL);
        }
        // The default namespace of that fixture, and CRI's.
        let ns = format!("husk-{pid}-{n}");
        remove_cgroups(&ns);
        for ns in [ns.as_str(), CRI_NAMESPACE] {
            // Its shims' sockets, named after its tasks.
            let bundles = work.join("state/io.containerd.runtime.v2.task").join(ns);
            for id in list_dir(&bundles)
                .into_iter()
                .chain(own_runc_state(&work, ns))
            {
                let _ = std::fs::remove_file(shim_socket(Path::new(&address), ns, &id));
            }
            remove_runc_state(&work, ns);
        }
        cleanup_mounts_under(&work);
        let _ = std::fs::remove_dir_all(&work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mount(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
