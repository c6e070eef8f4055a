//! A container's cgroup v2 figures as `io.containerd.cgroups.v2.Metrics`,
//! the type containerd decodes for a cgroup v2 task (`ctr task metrics`,
//! CRI stats).

use husk_shim_protos::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use protobuf::MessageField;

use crate::agent_client::ContainerStats;

/// The metrics containerd reads; a limit of `max` is `u64::MAX`, as the
/// cgroups library reports it.
pub fn to_metrics(s: &ContainerStats) -> Metrics {
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit.unwrap_or(u64::MAX),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            nr_periods: s.cpu_nr_periods,
            nr_throttled: s.cpu_nr_throttled,
            throttled_usec: s.cpu_throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: s.memory_usage_bytes,
            usage_limit: s.memory_limit_bytes.unwrap_or(u64::MAX),
            // containerd's CRI: working set = usage - inactive_file.
            inactive_file: s
                .memory_usage_bytes
                .saturating_sub(s.memory_working_set_bytes),
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.memory_oom_kills,
            ..Default::default()
        }),
        io: MessageField::some(IOStat {
            usage: vec![IOEntry {
                rbytes: s.io_read_bytes,
                wbytes: s.io_write_bytes,
                rios: s.io_read_ops,
                wios: s.io_write_ops,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_survives() {
        let m = to_metrics(&ContainerStats {
            memory_usage_bytes: 100,
            memory_working_set_bytes: 70,
            memory_limit_bytes: None,
            pids_current: 3,
            pids_limit: Some(16),
            ..Default::default()
        });
        let mem = m
            .memory
            .as_ref()
            .map(|m| (m.usage - m.inactive_file, m.usage_limit));
        assert_eq!(mem, Some((70, u64::MAX)));
        assert_eq!(m.pids.as_ref().map(|p| (p.current, p.limit)), Some((3, 16)));
    }
}
