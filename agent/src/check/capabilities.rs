//! The capabilities the agent needs, what each is for, and which of them a process lacks.
//!
//! The set is measured, not guessed: `agent/tests/least_privilege.rs` runs the agent as an
//! unprivileged user holding exactly these four and proves each one necessary. The systemd
//! unit and the DaemonSet grant the same four (`agent/tests/deploy.rs` compares them).

/// One capability the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// The name as systemd and `capabilities(7)` spell it.
    pub name: &'static str,
    pub bit: u32,
    /// Broader capabilities that grant the same (root's CAP_SYS_ADMIN covers CAP_BPF, …).
    pub covered_by: &'static [u32],
    /// What the agent does with it, for a reader deciding whether to grant it.
    pub purpose: &'static str,
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;

/// The agent's whole privilege: nothing beyond these.
pub const NEEDED: [Needed; 4] = [
    Needed {
        name: "CAP_BPF",
        bit: 39,
        covered_by: &[CAP_SYS_ADMIN],
        purpose: "load the eBPF programs and create their maps",
    },
    Needed {
        name: "CAP_PERFMON",
        bit: 38,
        covered_by: &[CAP_SYS_ADMIN],
        purpose: "load tracing programs and attach them to tracepoints (perf_event_open)",
    },
    Needed {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        covered_by: &[],
        purpose: "read other users' processes: /proc/<pid>/{fd,maps,exe,root} and Python frames",
    },
    Needed {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        covered_by: &[CAP_DAC_OVERRIDE],
        purpose: "read tracefs (mode 0700) for tracepoint ids and formats",
    },
];

/// The names of the whole set, space-separated as systemd's `AmbientCapabilities=` takes them.
pub fn needed_names() -> String {
    NEEDED.iter().map(|c| c.name).collect::<Vec<_>>().join(" ")
}

/// This process's effective set, from /proc/self/status `CapEff`.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

/// The `CapEff:` bits of a /proc/<pid>/status text. Pure.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether `caps` holds `bit`.
pub fn holds(caps: u64, bit: u32) -> bool {
    bit < 64 && caps & (1u64 << bit) != 0
}

/// The needed capabilities `caps` grants neither directly nor through a broader one.
pub fn missing(caps: u64) -> Vec<Needed> {
    NEEDED
        .iter()
        .filter(|c| !holds(caps, c.bit) && !c.covered_by.iter().any(|&b| holds(caps, b)))
        .copied()
        .collect()
}

/// "CAP_X (to …), CAP_Y (to …)": each missing capability with what it is for.
pub fn describe(missing: &[Needed]) -> String {
    missing
        .iter()
        .map(|c| format!("{} (to {})", c.name, c.purpose))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_FOUR: u64 = (1 << 39) | (1 << 38) | (1 << 19) | (1 << 2);

    #[test]
    fn the_four_are_enough_and_each_is_named_when_absent() {
        assert!(missing(ALL_FOUR).is_empty());
        for needed in NEEDED {
            let lacking = missing(ALL_FOUR & !(1u64 << needed.bit));
            assert_eq!(lacking, vec![needed]);
            let text = describe(&lacking);
            assert!(
                text.contains(needed.name) && text.contains(needed.purpose),
                "{text}"
            );
        }
    }

    #[test]
    fn broader_capabilities_cover_the_narrow_ones() {
        let sys_admin_and_override = (1u64 << 21) | (1 << 1) | (1 << 19);
        assert!(missing(sys_admin_and_override).is_empty());
        // Root's full set (CapEff 000001ffffffffff on this kernel generation).
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing(0).len(), 4);
    }

    #[test]
    fn cap_eff_is_read_from_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000080004\n";
        assert_eq!(parse_cap_eff(status), Some(ALL_FOUR));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }
}
