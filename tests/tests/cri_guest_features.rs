//! What pods run works in the guest kernel (issue 20), through containerd's
//! CRI with the `husk` handler, as `cri_runc.rs` runs it:
//!
//! - a privileged container makes a bridge and a veth pair in the pod's
//!   network namespace (the guest's), and nothing of that shows on the
//!   host: the pod's host namespace keeps only lo, the CNI veth and the
//!   shim's tap;
//! - an init container with `NET_ADMIN` (added, not privileged) installs
//!   Istio's `istio-init` NAT `REDIRECT` rule, with iptables' nft backend
//!   (what Istio uses now) and its legacy one, and the host's traffic to
//!   the pod's port reaches the app's listener on the redirect port;
//! - an nftables table, chain and rule are made and listed;
//! - overlayfs (lower on tmpfs and on the container's rootfs) and FUSE
//!   (`fuse-overlayfs`) mounts in a privileged container show their files;
//! - a `sysrq-trigger` crash panics the guest kernel, and the shim takes it
//!   as the VM's end: the pod's containers exit promptly, and the pod stops
//!   and goes with nothing left.
//!
//! The tools come from this host (Debian's iptables, nftables and
//! fuse-overlayfs, with their shared libraries) in an image built here
//! around busybox. Needs root, /dev/kvm, containerd, the CNI plugins,
//! busybox-static and those tools; skips with a SKIP line without them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::cri::{container_config, husk_setup, v1 as api, CriFixture, Pod, RemoveDir};
use husk_tests::oci::{busybox_base, OciImage, BUSYBOX_BINARY};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The image of the tools.
const TOOLS_IMAGE: &str = "localhost/husk/guest-tools:latest";

/// Generous: a first exec in a fresh pod VM pages its binary in over
/// virtio-fs on a loaded emulated host.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// CRI calls: the first pod VM of a new guest image boots cold to make its
/// template (minutes here).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The shim's tap in the pod's host namespace (shim/src/pod_net.rs).
const TAP_NAME: &str = "tap0_husk";

/// The port the init container's rule redirects (Istio's inbound capture
/// port).
const REDIRECT_PORT: u16 = 15001;

/// A host tool the image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// iptables with the nf_tables backend (`iptables-nft`, and
    /// `iptables`).
    IptablesNft,
    /// iptables with the legacy (x_tables) backend (`iptables-legacy`).
    IptablesLegacy,
    /// `nft`.
    Nft,
    /// `fuse-overlayfs`, a FUSE file system that mounts as root with no
    /// fusermount.
    FuseOverlayfs,
}

impl Tool {
    fn binary(self) -> &'static str {
        match self {
            Tool::IptablesNft => "/usr/sbin/xtables-nft-multi",
            Tool::IptablesLegacy => "/usr/sbin/xtables-legacy-multi",
            Tool::Nft => "/usr/sbin/nft",
            Tool::FuseOverlayfs => "/usr/bin/fuse-overlayfs",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Tool::IptablesNft | Tool::IptablesLegacy => "iptables",
            Tool::Nft => "nftables",
            Tool::FuseOverlayfs => "fuse-overlayfs",
        }
    }

    /// Adds the tool, its libraries and links to `img`.
    fn add(self, img: OciImage) -> std::io::Result<OciImage> {
        let mut img = img.host_binary(Path::new(self.binary()))?;
        let multi = |img: OciImage, binary: &str, names: &[&str]| {
            names
                .iter()
                .fold(img, |img, n| img.symlink(&format!("usr/sbin/{n}"), binary))
        };
        match self {
            Tool::IptablesNft => {
                img = multi(
                    img,
                    "xtables-nft-multi",
                    &["iptables-nft", "iptables-nft-save", "iptables-nft-restore"],
                )
                .symlink("usr/sbin/iptables", "iptables-nft")
                .symlink("usr/sbin/iptables-save", "iptables-nft-save");
            }
            Tool::IptablesLegacy => {
                img = multi(
                    img,
                    "xtables-legacy-multi",
                    &[
                        "iptables-legacy",
                        "iptables-legacy-save",
                        "iptables-legacy-restore",
                    ],
                );
            }
            Tool::Nft | Tool::FuseOverlayfs => {}
        }
        if matches!(self, Tool::IptablesNft | Tool::IptablesLegacy) {
            // The match and target extensions iptables loads by name
            // (`-p tcp`: libxt_tcp.so, `-j REDIRECT`: libxt_REDIRECT.so).
            let dir = xtables_dir().ok_or_else(|| {
                std::io::Error::other("iptables' extension directory (xtables) not found")
            })?;
            for e in std::fs::read_dir(&dir)? {
                let path = e?.path();
                if path.extension().is_some_and(|x| x == "so") {
                    img = img.host_file(&path)?;
                }
            }
        }
        Ok(img)
    }
}

/// Where this host's iptables loads its extensions from.
fn xtables_dir() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/xtables"),
        "/usr/lib64/xtables".to_string(),
        "/usr/lib/xtables".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|d| d.is_dir())
}

/// The busybox image with `tools`, `/run` (iptables' lock) and an
/// `/etc/mtab` link; None, with a SKIP line, where a tool is not on this
/// host.
fn tools_image(test: &str, tools: &[Tool]) -> Option<OciImage> {
    for t in tools {
        if !Path::new(t.binary()).is_file() {
            eprintln!(
                "SKIP {test}: {} missing (apt-get install {})",
                t.binary(),
                t.package()
            );
            return None;
        }
    }
    let mut img = busybox_base(TOOLS_IMAGE, &["sh"])
        .expect("the busybox image")
        .dir("run", 0o755)
        .symlink("etc/mtab", "/proc/self/mounts");
    for t in tools {
        img = t
            .add(img)
            .unwrap_or_else(|e| panic!("adding {t:?} to the image: {e}"));
    }
    Some(img)
}

/// The fixture with the tools image imported, and CRI calls bounded by
/// [`CALL_TIMEOUT`].
fn start_fixture(
    shim: &Path,
    opts: husk_tests::containerd::Options,
    img: &OciImage,
    dir: &RemoveDir,
) -> CriFixture {
    let mut f = CriFixture::start("husk", Some(shim), opts).expect("start the CRI fixture");
    f.set_call_timeout(CALL_TIMEOUT);
    let tar = dir.0.join("tools.tar");
    img.write_tar(&tar).expect("write the tools image");
    f.containerd()
        .import_image(&tar)
        .expect("import the tools image");
    assert!(
        f.cri().image_status(TOOLS_IMAGE).unwrap().is_some(),
        "CRI does not see {TOOLS_IMAGE}"
    );
    f
}

/// A pod whose sandbox is privileged (CRI refuses privileged containers
/// in any other).
fn privileged_pod(f: &CriFixture, name: &str) -> Pod {
    let mut config = f.pod_config(name);
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(api::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    f.run_pod_with(config).expect("RunPodSandbox")
}

/// A container of the tools image.
fn tools_container(
    name: &str,
    command: &[&str],
    security: api::LinuxContainerSecurityContext,
) -> api::ContainerConfig {
    let mut c = container_config(name, TOOLS_IMAGE, command, &format!("{name}.log"));
    c.linux = Some(api::LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    c
}

fn privileged() -> api::LinuxContainerSecurityContext {
    api::LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    }
}

/// Creates and starts `config` in `pod`; returns its id.
fn run(f: &CriFixture, pod: &Pod, config: &api::ContainerConfig) -> String {
    let name = config.metadata.as_ref().map_or("?", |m| m.name.as_str());
    let cri = f.cri();
    let id = cri
        .create_container(&pod.id, config, &pod.config)
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sh -c script` in container `id`: (exit code, stdout, stderr).
fn sh(f: &CriFixture, id: &str, script: &str) -> (i32, String, String) {
    let t = Instant::now();
    let o = f
        .cri()
        .exec_sync(id, &["sh", "-c", script], EXEC_TIMEOUT)
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
    eprintln!("ExecSync {script:?}: {} ms", t.elapsed().as_millis());
    (o.exit_code, text(&o.stdout), text(&o.stderr))
}

/// [`sh`] that must succeed; its stdout.
fn sh_ok(f: &CriFixture, id: &str, script: &str) -> String {
    let (rc, out, err) = sh(f, id, script);
    assert_eq!(rc, 0, "{script:?} failed: stdout {out:?} stderr {err:?}");
    out
}

/// Waits up to `timeout` for container `id` to exit; its status.
fn wait_exited(f: &CriFixture, id: &str, timeout: Duration) -> api::ContainerStatus {
    let end = Instant::now() + timeout;
    loop {
        let s = f.cri().container_status(id).unwrap();
        if s.state == api::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < end,
            "container {id} still not exited after {timeout:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The links of the network namespace at `netns` (host side), by name.
fn host_netns_links(netns: &str) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args([BUSYBOX_BINARY, "ip", "-o", "link"])
        .output()
        .expect("nsenter");
    assert!(out.status.success(), "ip link in {netns}: {out:?}");
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next()?.to_string())
        })
        .collect();
    names.sort();
    names
}

/// `GET http://addr/` from the host (HTTP/1.0, so the server closes when
/// done), tried until `timeout`: the body.
fn host_http_get(addr: &str, timeout: Duration) -> Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let once = || -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = Vec::new();
        s.take(64 * 1024).read_to_end(&mut reply)?;
        let reply = text(&reply);
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_string())
            }
            _ => Err(std::io::Error::other(format!(
                "not a 200 answer: {reply:?}"
            ))),
        }
    };
    let end = Instant::now() + timeout;
    loop {
        match once() {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= end => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Bridge, veth, iptables NAT REDIRECT (nft and legacy backends, from an
/// init container with NET_ADMIN), nftables, in one pod; the pod's host
/// namespace sees none of the guest's links.
#[test]
fn husk_guest_networking() {
    let test = "husk_guest_networking";
    let Some((shim, opts, cleanup)) = husk_setup(test, "cri-gnet") else {
        return;
    };
    let tools = [Tool::IptablesNft, Tool::IptablesLegacy, Tool::Nft];
    let Some(img) = tools_image(test, &tools) else {
        return;
    };
    let f = start_fixture(&shim, opts, &img, &cleanup);
    let cri = f.cri();
    let pod = privileged_pod(&f, "net");
    let ip = pod.ip.clone().expect("the pod's IP");
    let netns = pod.netns.clone().expect("the pod's netns");
    let host_links = host_netns_links(&netns);
    assert_eq!(
        host_links,
        ["eth0", "lo", TAP_NAME],
        "the pod's host namespace before the guest made links"
    );

    // istio-init: NET_ADMIN and NET_RAW added, everything else dropped,
    // root, not privileged; the rules go in and the container exits 0.
    let init = tools_container(
        "istio-init",
        &[
            "sh",
            "-c",
            &format!(
                "set -e; \
                 iptables-nft -t nat -A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports {REDIRECT_PORT}; \
                 iptables-legacy -t nat -A PREROUTING -p tcp --dport 81 -j REDIRECT --to-ports {REDIRECT_PORT}; \
                 echo rules-installed"
            ),
        ],
        api::LinuxContainerSecurityContext {
            capabilities: Some(api::Capability {
                add_capabilities: vec!["NET_ADMIN".into(), "NET_RAW".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            run_as_user: Some(api::Int64Value { value: 0 }),
            ..Default::default()
        },
    );
    let init_id = run(&f, &pod, &init);
    let s = wait_exited(&f, &init_id, EXEC_TIMEOUT);
    let log = std::fs::read_to_string(pod.log_dir.join("istio-init.log")).unwrap_or_default();
    assert_eq!(s.exit_code, 0, "istio-init failed: {s:?}\nits log:\n{log}");
    assert!(log.contains("rules-installed"), "istio-init's log: {log}");

    // The app: busybox httpd on the redirect port only; no NET_ADMIN.
    let app = tools_container(
        "app",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /www && echo served-on-{REDIRECT_PORT} > /www/index.html && \
                 exec httpd -f -p {REDIRECT_PORT} -h /www"
            ),
        ],
        api::LinuxContainerSecurityContext::default(),
    );
    let app_id = run(&f, &pod, &app);
    // Without NET_ADMIN the app cannot change the rules.
    let (rc, _, err) = sh(&f, &app_id, "iptables-nft -t nat -F PREROUTING");
    assert_ne!(rc, 0, "the app (no NET_ADMIN) flushed the NAT rules");
    eprintln!("iptables without NET_ADMIN: rc {rc}: {}", err.trim());

    // The host's traffic to the pod's ports 80 (nft rule) and 81 (legacy
    // rule) reaches the listener on 15001; nothing listens on 80 or 81.
    let want = format!("served-on-{REDIRECT_PORT}\n");
    for port in [80, 81] {
        let body = host_http_get(&format!("{ip}:{port}"), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("GET {ip}:{port} from the host: {e}"));
        assert_eq!(body, want, "GET {ip}:{port}");
    }

    // A privileged container: the rules as the guest holds them, a bridge
    // with a veth enslaved, an nftables table.
    let tool = run(
        &f,
        &pod,
        &tools_container("tool", &["sleep", "600"], privileged()),
    );
    let nat = sh_ok(
        &f,
        &tool,
        "iptables-nft-save -t nat; iptables-legacy-save -t nat",
    );
    // Only the redirect port has a listener: the answers on 80 and 81
    // came through the rules.
    let listen = sh_ok(&f, &tool, "netstat -ltn");
    let ports: Vec<&str> = listen
        .lines()
        .filter(|l| l.contains("LISTEN"))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next())
        .collect();
    assert_eq!(ports, [REDIRECT_PORT.to_string()], "listeners:\n{listen}");
    for rule in [
        format!("-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports {REDIRECT_PORT}"),
        format!("-A PREROUTING -p tcp -m tcp --dport 81 -j REDIRECT --to-ports {REDIRECT_PORT}"),
    ] {
        assert!(nat.contains(&rule), "{rule:?} missing in:\n{nat}");
    }
    let links = sh_ok(
        &f,
        &tool,
        // busybox ip names a veth's peer vethN whatever `peer name` says:
        // it is renamed.
        "set -e; brctl addbr hkgbr0; ip link add hkgv0 type bridge; \
         ip link add hkgva type veth; \
         peer=$(ip -o link | sed -n 's/^[0-9]*: \\([^@]*\\)@hkgva:.*/\\1/p'); \
         ip link set \"$peer\" name hkgvb; \
         brctl addif hkgbr0 hkgva; ip link set hkgvb master hkgv0; \
         for l in hkgbr0 hkgv0 hkgva hkgvb; do ip link set $l up; done; \
         ip addr add 192.168.251.1/24 dev hkgbr0; ip -o link",
    );
    for want in [
        "hkgbr0",
        "hkgv0",
        "hkgva@hkgvb",
        "hkgvb@hkgva",
        "master hkgbr0",
        "master hkgv0",
    ] {
        assert!(links.contains(want), "{want:?} missing in:\n{links}");
    }
    let ruleset = sh_ok(
        &f,
        &tool,
        "set -e; nft add table inet husk_t; \
         nft add chain inet husk_t input '{ type filter hook input priority 0; policy accept; }'; \
         nft add rule inet husk_t input tcp dport 9999 counter drop; \
         nft list ruleset",
    );
    for want in [
        "table inet husk_t",
        "chain input",
        "tcp dport 9999 counter packets 0 bytes 0 drop",
    ] {
        assert!(ruleset.contains(want), "{want:?} missing in:\n{ruleset}");
    }
    // Conntrack's GC still reaps (the guest kernel's patch 0020 leaves its
    // worker idle while the table is empty and wakes it on an insert): in
    // a network namespace of its own, a NAT rule makes the namespace
    // tracked, one connection through it ends in TIME_WAIT (5 s there),
    // and only the GC worker removes that entry (nothing looks it up).
    let gc = sh_ok(
        &f,
        &tool,
        "unshare -n sh -c 'set -e; ip link set lo up; \
         iptables-nft -t nat -A OUTPUT -p tcp --dport 9 -j REDIRECT --to-ports 9999; \
         echo 5 > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait; \
         (timeout 20 nc -l -p 9999 </dev/null >/dev/null || true) & sleep 1; \
         echo hi | timeout 20 nc 127.0.0.1 9 >/dev/null || true; wait; \
         echo tracked=$(cat /proc/sys/net/netfilter/nf_conntrack_count); \
         for i in $(seq 90); do \
           [ $(cat /proc/sys/net/netfilter/nf_conntrack_count) = 0 ] && { echo reaped-after=$i; exit 0; }; \
           sleep 1; done; echo not-reaped'",
    );
    assert!(
        gc.contains("tracked=1") && gc.contains("reaped-after="),
        "conntrack GC in a namespace of the guest:\n{gc}"
    );
    eprintln!("conntrack gc: {}", gc.trim().replace('\n', " "));
    // Still served through the rules, with the bridges and the nft table
    // in place.
    let body = host_http_get(&format!("{ip}:80"), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("GET {ip}:80 from the host after the links: {e}"));
    assert_eq!(body, want);

    // Nothing the guest made is on the host: the pod's host namespace
    // has what it had, the host none of the names.
    assert_eq!(
        host_netns_links(&netns),
        host_links,
        "the pod's host namespace changed"
    );
    for l in ["hkgbr0", "hkgv0", "hkgva", "hkgvb"] {
        assert!(
            !Path::new("/sys/class/net").join(l).exists(),
            "the guest's {l} is on the host"
        );
    }

    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    f.assert_no_leaks(Duration::from_secs(10));
    cleanup.assert_no_pod_dirs();
}

/// overlayfs and FUSE mounts in a privileged container; then a
/// sysrq-trigger crash of the guest kernel is the VM's end to the shim:
/// the containers exit promptly and the pod goes with nothing left.
#[test]
fn husk_guest_mounts_and_panic() {
    let test = "husk_guest_mounts_and_panic";
    let Some((shim, opts, cleanup)) = husk_setup(test, "cri-gfs") else {
        return;
    };
    let Some(img) = tools_image(test, &[Tool::FuseOverlayfs]) else {
        return;
    };
    let f = start_fixture(&shim, opts, &img, &cleanup);
    let cri = f.cri();
    let pod = privileged_pod(&f, "fs");
    let tool = run(
        &f,
        &pod,
        &tools_container("tool", &["sleep", "600"], privileged()),
    );
    let plain = run(
        &f,
        &pod,
        &tools_container("plain", &["sleep", "600"], Default::default()),
    );

    // overlayfs, all layers on a tmpfs.
    let out = sh_ok(
        &f,
        &tool,
        "set -e; mkdir -p /ov; mount -t tmpfs tmpfs /ov; cd /ov; \
         mkdir lower upper work merged; echo from-lower > lower/a; \
         mount -t overlay overlay -o lowerdir=/ov/lower,upperdir=/ov/upper,workdir=/ov/work /ov/merged; \
         cat merged/a; echo from-merged > merged/b; cat upper/b; rm merged/a; \
         test -e lower/a && test ! -e merged/a && echo whiteout-ok; \
         grep ' /ov/merged ' /proc/mounts",
    );
    for want in [
        "from-lower\n",
        "from-merged\n",
        "whiteout-ok\n",
        "overlay /ov/merged overlay",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // overlayfs with the container's rootfs (the pod's virtio-fs share)
    // as its lower layer, as docker-in-docker stacks image layers.
    let out = sh_ok(
        &f,
        &tool,
        "set -e; mkdir -p /ov/u2 /ov/w2 /ov/m2; \
         mount -t overlay overlay -o lowerdir=/etc,upperdir=/ov/u2,workdir=/ov/w2 /ov/m2; \
         head -1 /ov/m2/passwd; echo new > /ov/m2/new; cat /ov/u2/new; test ! -e /etc/new && echo lower-untouched",
    );
    for want in ["root:x:0:0", "new\n", "lower-untouched\n"] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }

    // FUSE: fuse-overlayfs (a userspace daemon on /dev/fuse).
    let out = sh_ok(
        &f,
        &tool,
        "set -e; ls -l /dev/fuse; mkdir -p /ov/fl /ov/fu /ov/fw /ov/fm; echo via-fuse > /ov/fl/f; \
         fuse-overlayfs -o lowerdir=/ov/fl,upperdir=/ov/fu,workdir=/ov/fw /ov/fm; \
         cat /ov/fm/f; echo written-through-fuse > /ov/fm/g; cat /ov/fu/g; \
         grep ' /ov/fm ' /proc/mounts; umount /ov/fm; test ! -e /ov/fm/f && echo unmounted",
    );
    for want in [
        "via-fuse\n",
        "written-through-fuse\n",
        "/ov/fm fuse",
        "unmounted\n",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }

    // sysrq c: the guest kernel panics (panic=-1 reboot=k: the VM ends).
    let t = Instant::now();
    let crash = cri.exec_sync(
        &tool,
        &["sh", "-c", "echo c > /proc/sysrq-trigger"],
        EXEC_TIMEOUT,
    );
    eprintln!(
        "sysrq crash: ExecSync answered {:?} after {} ms",
        crash.as_ref().map(|o| o.exit_code),
        t.elapsed().as_millis()
    );
    if let Ok(o) = &crash {
        assert_ne!(o.exit_code, 0, "the crash exec ended well: {o:?}");
    }
    // Every container ends, promptly, with the VM.
    for id in [&tool, &plain] {
        let s = wait_exited(&f, id, Duration::from_secs(30));
        assert_ne!(s.exit_code, 0, "{s:?}");
    }
    eprintln!(
        "containers exited {} ms after the crash",
        t.elapsed().as_millis()
    );
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cri.pod_sandbox_status(&pod.id).unwrap();
        if s.state == api::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(Instant::now() < end, "the pod is still ready: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The guest's console says it was the panic.
    let console = std::fs::read_dir(&cleanup.0)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    assert!(
        console.contains("sysrq triggered crash"),
        "no panic on the guest's console; its last lines, last first:\n{}",
        tail.join("\n")
    );

    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    f.assert_no_leaks(Duration::from_secs(10));
    cleanup.assert_no_pod_dirs();
}
