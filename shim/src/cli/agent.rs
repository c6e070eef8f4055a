//! `husk agent ...`: talk to a guest's agent through the VM's hybrid-vsock
//! socket.

use std::path::PathBuf;
use std::time::Duration;

use husk_agent_protocol::API_VERSION;

use super::exit_code;
use crate::agent_client::{AgentClient, AgentVersion, GuestInfo};

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
    let timeout = match Duration::try_from_secs_f64(args.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("husk: --timeout must be a positive number of seconds");
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
