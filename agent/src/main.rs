//! husk-agent: PID 1 of a husk guest.
//!
//! Blocks the signals it handles (before any thread starts), mounts /proc,
//! /sys, /dev, /run, /tmp and cgroup2, puts stdio on /dev/console, starts the
//! log stream to the host, takes containers' stdio streams on vsock port
//! 1027, prepares the containers' pod cgroup, turns IPv6 off and quiet on
//! the pod's interface (until a pod gives it an IPv6 address), serves the ttrpc `Agent` API on vsock port 1024,
//! and only then prints `husk-agent ready (version X, kernel Y)`. Then it
//! reaps every child (handing `Exec`'s their statuses) and powers off on SIGTERM/SIGINT/SIGPWR or a `Shutdown`
//! request (at once after ready when the command line has `husk.oneshot=1`).

mod init;

use std::io::Write;
use std::sync::Arc;

use husk_agent::container::{Config, Containers};
use husk_agent::facts::{GuestFacts, ProcFacts};
use husk_agent::log::{self, log};
use husk_agent::reaper::{ReapMode, Reaper};
use husk_agent::service::{self, AgentService, ContainerService};
use husk_agent::stdio::{StdioConfig, StdioServer};
use husk_agent::{cmdline, echo, AGENT_VERSION, READY_MARKER};
use husk_agent_protocol::AGENT_VSOCK_PORT;

fn main() {
    // A CRI pod's sandbox process (PID 1 of its own pid namespace).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(husk_agent::container::PAUSE_ARG))
    {
        std::process::exit(husk_agent::pause::run());
    }
    if std::process::id() != 1 {
        log(&format!(
            "version {AGENT_VERSION}: not PID 1; nothing to do outside a guest"
        ));
        return;
    }
    // One malloc arena, set while this is the only thread: each thread
    // that allocates (every ttrpc connection has several) would otherwise
    // get a 132 KiB arena of its own, and each page of it the guest
    // touches is a guest page fault (milliseconds of emulated kernel on
    // nested hosts) and guest memory private to this VM.
    // SAFETY: mallopt takes no pointers; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // First, while this is the only thread: every thread inherits the mask.
    let signals = init::block_signals();
    init::one_malloc_arena();
    init::mount_basics();
    init::console_stdio();
    log::connect_host_stream();

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let oneshot = cmdline::cmdline_flag(&cmdline, "husk.oneshot");
    let release = ProcFacts
        .kernel_release()
        .unwrap_or_else(|_| "unknown".into());
    // Before ready, so a template snapshot holds it done: what the first
    // requests would otherwise read or ask the kernel (see their docs).
    let _ = ProcFacts.boot_id();
    let _ = ProcFacts.meminfo();
    husk_agent::exec::prepare();
    // The pod interface's IPv6 off and quiet until a pod asks for it.
    match husk_agent::network::ipv6::quiet_at_boot() {
        Ok(done) if done.is_empty() => {}
        Ok(done) => log(&format!(
            "IPv6 off and quiet on {done:?} until a pod has an IPv6 address"
        )),
        Err(e) => log(&format!("quieting IPv6: {e}")),
    }

    // Tests and benchmarks ask for an echo port on the command line.
    if let Some(port) = cmdline::cmdline_value(&cmdline, "husk.echo_port") {
        match port.parse::<u32>() {
            Ok(p) => match echo::spawn(p) {
                Ok(()) => log(&format!("echo service on vsock port {p}")),
                Err(e) => log(&format!("echo service on vsock port {p}: {e}")),
            },
            Err(_) => log(&format!("husk.echo_port={port}: not a port number")),
        }
    }
    // Containers' stdio streams (vsock port 1027): the listener and the
    // one thread that copies every stream, made before ready so a template
    // snapshot holds them warm. Kept for the life of PID 1. Without it the
    // agent still serves everything but containers' stdio.
    let stdio_server = match StdioServer::start(StdioConfig::guest()) {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!("containers' stdio unavailable: {e}"));
            None
        }
    };
    let addr = service::vsock_address(AGENT_VSOCK_PORT);
    // As PID 1 this process alone reaps every child: supervise drives it.
    let reaper = Arc::new(Reaper::new(ReapMode::AllChildren));
    let mut service = AgentService::new(
        ProcFacts,
        Box::new(init::power_off_soon),
        Arc::clone(&reaper),
    );
    if let Some(stdio) = &stdio_server {
        if let Some(c) = containers(&reaper) {
            service = service.with_containers(ContainerService::new(
                c,
                Arc::clone(stdio.registry()),
                stdio.pump().clone(),
            ));
        }
    }
    // Kept for the life of PID 1 (supervise never returns).
    let _server = match service::serve(&addr, service) {
        Ok(server) => {
            // One write, so no other thread's line lands inside it.
            let line = format!("{READY_MARKER} (version {AGENT_VERSION}, kernel {release})\n");
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
            Some(server)
        }
        Err(e) => {
            // Not ready: the host cannot reach us. Stay up as PID 1 (exiting
            // would panic the kernel) so the console tells what happened.
            log(&format!("agent API unavailable, not ready: {e}"));
            None
        }
    };
    if oneshot {
        init::power_off("oneshot");
    }
    init::supervise(&signals, &reaper);
}

/// The container registry (its monitor thread) and the pod cgroup with its
/// controllers enabled: made before ready, so a template snapshot holds
/// them (the cgroup mkdir and subtree_control writes are not paid per
/// container). `None` (logged): the container RPCs answer INTERNAL.
fn containers(reaper: &Arc<Reaper>) -> Option<Containers> {
    let c = match Containers::new(Arc::clone(reaper), Config::default()) {
        Ok(c) => c,
        Err(e) => {
            log(&format!("containers unavailable: {e}"));
            return None;
        }
    };
    if let Err(e) = c.prepare_pod_cgroup() {
        // create retries it; log why it failed now.
        log(&format!("pod cgroup: {e}"));
    }
    Some(c)
}
