//! `husk agent ...`: talk to a guest's agent through the VM's hybrid-vsock
//! socket: `ping`, `exec`, `mount`, `umount`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use husk_agent_protocol::{API_VERSION, EXEC_OUTPUT_CAP, EXEC_STDIN_MAX};

use super::exit_code;
use crate::agent_client::{
    AgentClient, AgentClientError, AgentVersion, ExecCommand, ExecStatus, GuestInfo, MountSource,
    MountSpec,
};

/// `husk agent exec`'s exit code when the program is not in the guest.
pub const EXEC_NOT_FOUND: i32 = 127;
/// `husk agent exec`'s exit code when the program cannot be run there.
pub const EXEC_CANNOT_RUN: i32 = 126;

/// `secs` as a positive duration, or the message for `flag`.
fn positive_secs(flag: &str, secs: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(secs) {
        Ok(t) if !t.is_zero() => Ok(t),
        _ => Err(format!("{flag} must be a positive number of seconds")),
    }
}

/// Options of `husk agent ping`.
#[derive(Debug, clap::Args)]
pub struct PingArgs {
    /// The VM's hybrid-vsock Unix socket.
    #[arg(long)]
    pub uds: PathBuf,
    /// Give up after this many seconds (connecting, and each call).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Asks the agent for its version and the guest's facts and prints them, one
/// `key: value` per line; returns the process exit code.
pub fn ping(args: &PingArgs) -> i32 {
    let timeout = match positive_secs("--timeout", args.timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    let answers = AgentClient::connect(&args.uds, timeout).and_then(|c| {
        let c = c.with_call_timeout(timeout);
        Ok((c.version()?, c.guest_info()?))
    });
    match answers {
        Ok((version, info)) => {
            if version.api_version != API_VERSION {
                eprintln!(
                    "husk: warning: the agent speaks API version {}, this husk {API_VERSION}",
                    version.api_version
                );
            }
            print!("{}", report(&version, &info));
            exit_code::OK
        }
        Err(e) => {
            eprintln!("husk: {e}");
            exit_code::ERROR
        }
    }
}

/// The `key: value` lines `ping` prints.
pub fn report(version: &AgentVersion, info: &GuestInfo) -> String {
    format!(
        "agent_version: {}\n\
         api_version: {}\n\
         kernel_release: {}\n\
         boot_id: {}\n\
         instance_id: {}\n\
         hostname: {}\n\
         mem_total_kib: {}\n\
         mem_available_kib: {}\n\
         uptime_s: {:.2}\n",
        version.agent_version,
        version.api_version,
        info.kernel_release,
        info.boot_id,
        info.instance_id,
        info.hostname,
        info.mem_total_kib,
        info.mem_available_kib,
        info.uptime_seconds,
    )
}

/// Options of `husk agent exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The VM's hybrid-vsock Unix socket.
    #[arg(long)]
    pub uds: PathBuf,
    /// Kill the command (its whole process group) after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Give up reaching the agent after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// An environment variable for the command (repeatable); the command
    /// gets only these, and PATH=/usr/sbin:/usr/bin:/sbin:/bin unless one
    /// sets PATH.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command's working directory in the guest (default /).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Read all of husk's stdin and give it to the command (otherwise its
    /// stdin is empty).
    #[arg(long)]
    pub stdin: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Reads all of `r`, refusing more than `max` bytes.
fn read_bounded(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(io::Error::other(format!("more than {max} bytes")));
    }
    Ok(buf)
}

/// Runs a command in the guest: its stdout and stderr become ours, its exit
/// code ours (128 + signal when a signal ended it, 124 on timeout, 127 when
/// the program is not there, 126 when it cannot be run, 1 when husk
/// failed).
pub fn exec(args: &ExecArgs) -> i32 {
    let times = positive_secs("--timeout", args.timeout)
        .and_then(|t| positive_secs("--connect-timeout", args.connect_timeout).map(|c| (t, c)));
    let (timeout, connect_timeout) = match times {
        Ok(t) => t,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    let stdin = if args.stdin {
        match read_bounded(&mut io::stdin().lock(), EXEC_STDIN_MAX) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("husk: reading stdin for the command: {e}");
                return exit_code::ERROR;
            }
        }
    } else {
        Vec::new()
    };
    let cmd = ExecCommand {
        argv: args.command.clone(),
        env: args.env.clone(),
        cwd: args.cwd.clone(),
        stdin,
        timeout,
    };
    let result = AgentClient::connect(&args.uds, connect_timeout)
        .and_then(|c| c.with_call_timeout(connect_timeout).exec(&cmd));
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            eprintln!("husk: {e}");
            return match &e {
                AgentClientError::Rpc {
                    code: ttrpc::Code::NOT_FOUND,
                    ..
                } => EXEC_NOT_FOUND,
                AgentClientError::Rpc {
                    code: ttrpc::Code::PERMISSION_DENIED,
                    ..
                } => EXEC_CANNOT_RUN,
                _ => exit_code::ERROR,
            };
        }
    };
    // Our stdout may be closed (`| head`): the command's status still
    // counts.
    let _ = io::stdout().lock().write_all(&out.stdout);
    let _ = io::stdout().lock().flush();
    let _ = io::stderr().lock().write_all(&out.stderr);
    let name = &cmd.argv[0];
    for (truncated, stream) in [
        (out.stdout_truncated, "stdout"),
        (out.stderr_truncated, "stderr"),
    ] {
        if truncated {
            eprintln!("husk: {name}: {stream} truncated to its first {EXEC_OUTPUT_CAP} bytes");
        }
    }
    match out.status {
        ExecStatus::TimedOut => eprintln!("husk: {name}: killed after --timeout {timeout:?}"),
        ExecStatus::Signaled(sig) => eprintln!("husk: {name}: killed by signal {sig}"),
        ExecStatus::Exited(_) => {}
    }
    out.status.shell_code()
}

/// Options of `husk agent mount`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["disk", "share"])))]
pub struct MountArgs {
    /// The VM's hybrid-vsock Unix socket.
    #[arg(long)]
    pub uds: PathBuf,
    /// A virtio-blk disk: its serial, or its /dev/vdX path.
    #[arg(long, value_name = "SERIAL")]
    pub disk: Option<String>,
    /// A virtio-fs share: its tag.
    #[arg(long, value_name = "TAG")]
    pub share: Option<String>,
    /// Where in the guest (an absolute path; created if missing).
    #[arg(long, value_name = "DIR")]
    pub target: String,
    /// Mount read-only.
    #[arg(long)]
    pub ro: bool,
    /// The filesystem type (default ext4 for a disk; a share is virtiofs).
    #[arg(long)]
    pub fstype: Option<String>,
    /// Filesystem options (mount(2) data), e.g. "noload".
    #[arg(long, default_value = "")]
    pub options: String,
    /// Give up after this many seconds (connecting, and the call).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Mounts a disk or share in the guest and prints
/// `mounted DEVICE on TARGET (FSTYPE[, read-only])`.
pub fn mount(args: &MountArgs) -> i32 {
    let source = match (&args.disk, &args.share) {
        (Some(d), _) => MountSource::Disk(d.clone()),
        (None, Some(t)) => MountSource::Share(t.clone()),
        // clap requires one of them.
        (None, None) => {
            eprintln!("husk: give --disk or --share");
            return exit_code::ERROR;
        }
    };
    let spec = MountSpec {
        source,
        target: args.target.clone(),
        fstype: args.fstype.clone(),
        read_only: args.ro,
        options: args.options.clone(),
    };
    let result =
        connect(&args.uds, args.timeout).and_then(|c| c.mount(&spec).map_err(|e| e.to_string()));
    match result {
        Ok(m) => {
            println!(
                "mounted {} on {} ({}{})",
                m.device,
                m.target,
                m.fstype,
                if args.ro { ", read-only" } else { "" }
            );
            exit_code::OK
        }
        Err(e) => {
            eprintln!("husk: {e}");
            exit_code::ERROR
        }
    }
}

/// Options of `husk agent umount`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The VM's hybrid-vsock Unix socket.
    #[arg(long)]
    pub uds: PathBuf,
    /// The mount point in the guest.
    #[arg(long, value_name = "DIR")]
    pub target: String,
    /// Give up after this many seconds (connecting, and the call).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Syncs and unmounts a mount point in the guest.
pub fn umount(args: &UmountArgs) -> i32 {
    match connect(&args.uds, args.timeout)
        .and_then(|c| c.unmount(&args.target).map_err(|e| e.to_string()))
    {
        Ok(()) => exit_code::OK,
        Err(e) => {
            eprintln!("husk: {e}");
            exit_code::ERROR
        }
    }
}

/// Connects within `timeout_secs`, which also bounds each call.
fn connect(uds: &std::path::Path, timeout_secs: f64) -> Result<AgentClient, String> {
    let timeout = positive_secs("--timeout", timeout_secs)?;
    AgentClient::connect(uds, timeout)
        .map(|c| c.with_call_timeout(timeout))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn stdin_is_read_up_to_the_bound() {
        assert_eq!(read_bounded(&mut &b"abc"[..], 3).unwrap(), b"abc");
        let e = read_bounded(&mut &b"abcd"[..], 3).unwrap_err();
        assert_eq!(e.to_string(), "more than 3 bytes");
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(positive_secs("--t", 1.5), Ok(Duration::from_millis(1500)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                positive_secs("--t", bad),
                Err("--t must be a positive number of seconds".into())
            );
        }
    }
}
