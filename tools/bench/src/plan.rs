//! What a run does: which scenarios, on which machines, with which VMMs, in which order.
//!
//! Every repetition runs each chosen scenario once with every VMM. The VMMs take turns
//! going first (the order rotates by one each repetition), so a drift in the machine's
//! load over the run does not favour one of them.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::launch::{BalloonFeatures, Kind, Machine, MemBacking, VmmUnderTest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Boot the stock kernel as users run it, then leave the guest idle for 30 s.
    Boot,
    /// Boot the minimal kernel.
    Minimal,
    /// Boot, then the scripted workload, sampling host RSS throughout.
    Timeline,
    /// Four guests at once, each filling and freeing memory.
    Density,
    /// vmm only: the boot's guest on one backing of guest RAM, writing memory, filling and
    /// freeing it, inflating the balloon (`--only backings`; not in the default run).
    #[serde(rename = "backing-anon")]
    BackingAnon,
    #[serde(rename = "backing-thp")]
    BackingThp,
    #[serde(rename = "backing-hugetlb")]
    BackingHugetlb,
    /// vmm only: the boot's guest idle 30 s after ready, with where its free memory is and
    /// how much of it the host holds; one scenario per way of getting it back (`--only
    /// slack`; not in the default run). This one as users run it.
    #[serde(rename = "slack-baseline")]
    SlackBaseline,
    /// … the guest compacts its memory 20 s after ready.
    #[serde(rename = "slack-compact")]
    SlackCompact,
    /// … `page_reporting.page_reporting_order=5` on the guest's command line.
    #[serde(rename = "slack-cmdline-order5")]
    SlackCmdlineOrder5,
    /// … the guest sets its reporting order to 5 at ready (sysfs).
    #[serde(rename = "slack-order5")]
    SlackOrder5,
    /// … the guest sets its reporting order to 0 at ready (sysfs).
    #[serde(rename = "slack-order0")]
    SlackOrder0,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Boot,
        Scenario::Minimal,
        Scenario::Timeline,
        Scenario::Density,
        Scenario::BackingAnon,
        Scenario::BackingThp,
        Scenario::BackingHugetlb,
        Scenario::SlackBaseline,
        Scenario::SlackCompact,
        Scenario::SlackCmdlineOrder5,
        Scenario::SlackOrder5,
        Scenario::SlackOrder0,
    ];

    /// The slack part's scenarios, the baseline (as users run it) first.
    pub const SLACK: [Scenario; 5] = [
        Scenario::SlackBaseline,
        Scenario::SlackCompact,
        Scenario::SlackCmdlineOrder5,
        Scenario::SlackOrder5,
        Scenario::SlackOrder0,
    ];

    /// The backings part's scenarios, `anon` (the reference) first.
    pub const BACKINGS: [Scenario; 3] = [
        Scenario::BackingAnon,
        Scenario::BackingThp,
        Scenario::BackingHugetlb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Boot => "boot",
            Scenario::Minimal => "minimal",
            Scenario::Timeline => "timeline",
            Scenario::Density => "density",
            Scenario::BackingAnon => "backing-anon",
            Scenario::BackingThp => "backing-thp",
            Scenario::BackingHugetlb => "backing-hugetlb",
            Scenario::SlackBaseline => "slack-baseline",
            Scenario::SlackCompact => "slack-compact",
            Scenario::SlackCmdlineOrder5 => "slack-cmdline-order5",
            Scenario::SlackOrder5 => "slack-order5",
            Scenario::SlackOrder0 => "slack-order0",
        }
    }

    /// The short name of a slack scenario's variant (its column in the report).
    pub fn slack_variant(self) -> Option<&'static str> {
        match self {
            Scenario::SlackBaseline => Some("baseline"),
            Scenario::SlackCompact => Some("compact"),
            Scenario::SlackCmdlineOrder5 => Some("cmdline order 5"),
            Scenario::SlackOrder5 => Some("order 5"),
            Scenario::SlackOrder0 => Some("order 0"),
            _ => None,
        }
    }

    /// Parts that compare vmm with itself: QEMU does not run them.
    pub fn vmm_only(self) -> bool {
        self.backing().is_some() || self.slack_variant().is_some()
    }

    /// The backing of guest RAM the scenario is about, if it is one of the backings part.
    pub fn backing(self) -> Option<MemBacking> {
        match self {
            Scenario::BackingAnon => Some(MemBacking::Anon),
            Scenario::BackingThp => Some(MemBacking::Thp),
            Scenario::BackingHugetlb => Some(MemBacking::Hugetlb),
            _ => None,
        }
    }
}

/// Which parts of the timeline's workload run (all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineParts {
    /// Fill 300 MiB, free it, watch it come back.
    pub reclaim: bool,
    /// Inflate and deflate 256 MiB, then 1 GiB.
    pub inflate: bool,
    /// Inflate 1 GiB, then a burst that needs memory back from the balloon.
    pub burst: bool,
}

/// What `--only` selects: a comma-separated list of these words.
pub const PART_WORDS: &str =
    "boot, minimal, reclaim, inflate, burst, timeline (= reclaim,inflate,burst), \
     density, backings, slack (both vmm only, not in the default run)";

/// The scenarios (and timeline parts) a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub boot: bool,
    pub minimal: bool,
    pub timeline: TimelineParts,
    pub density: bool,
    /// vmm on each of `anon`, `thp` and `hugetlb`.
    pub backings: bool,
    /// vmm's idle guest, where its free memory is, and each way of getting it back.
    pub slack: bool,
}

impl Selection {
    /// The default run: every part but `backings` and `slack`, which compare vmm with
    /// itself (`backings` also needs huge pages reserved on the KVM host).
    pub fn everything() -> Selection {
        Selection {
            boot: true,
            minimal: true,
            timeline: TimelineParts {
                reclaim: true,
                inflate: true,
                burst: true,
            },
            density: true,
            backings: false,
            slack: false,
        }
    }

    pub fn scenarios(&self) -> Vec<Scenario> {
        let t = self.timeline;
        Scenario::ALL
            .into_iter()
            .filter(|s| match s {
                Scenario::Boot => self.boot,
                Scenario::Minimal => self.minimal,
                Scenario::Timeline => t.reclaim || t.inflate || t.burst,
                Scenario::Density => self.density,
                Scenario::BackingAnon | Scenario::BackingThp | Scenario::BackingHugetlb => {
                    self.backings
                }
                Scenario::SlackBaseline
                | Scenario::SlackCompact
                | Scenario::SlackCmdlineOrder5
                | Scenario::SlackOrder5
                | Scenario::SlackOrder0 => self.slack,
            })
            .collect()
    }
}

impl FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Selection, String> {
        let mut sel = Selection {
            boot: false,
            minimal: false,
            timeline: TimelineParts {
                reclaim: false,
                inflate: false,
                burst: false,
            },
            density: false,
            backings: false,
            slack: false,
        };
        for word in s.split(',').map(str::trim) {
            match word {
                "boot" => sel.boot = true,
                "minimal" => sel.minimal = true,
                "reclaim" => sel.timeline.reclaim = true,
                "inflate" => sel.timeline.inflate = true,
                "burst" => sel.timeline.burst = true,
                "timeline" => sel.timeline = Selection::everything().timeline,
                "density" => sel.density = true,
                "backings" => sel.backings = true,
                "slack" => sel.slack = true,
                _ => return Err(format!("unknown part {word:?}; the parts are {PART_WORDS}")),
            }
        }
        Ok(sel)
    }
}

/// The guest files and options every scenario shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFiles {
    pub kernel: PathBuf,
    pub minimal_kernel: Option<PathBuf>,
    pub initrd: PathBuf,
    /// Appended to every guest's kernel command line.
    pub cmdline: String,
}

/// Memory the timeline and density guests fill and then free, in MiB.
pub const FILL_MIB: u64 = 300;

/// Guests started at once by the density scenario.
pub const DENSITY_GUESTS: usize = 4;

/// The machine a scenario boots (each guest of it, for density).
pub fn machine(scenario: Scenario, files: &GuestFiles) -> Machine {
    // As users run the balloon: free page reporting and statistics, nothing else.
    let as_users_run_it = BalloonFeatures {
        reporting: true,
        stats: true,
        deflate_on_oom: false,
    };
    let stock = |mem_mib, cpus, balloon| Machine {
        mem_mib,
        cpus,
        kernel: files.kernel.clone(),
        initrd: files.initrd.clone(),
        balloon,
        mem_backing: None,
        cmdline: files.cmdline.clone(),
    };
    match scenario {
        Scenario::Boot => stock(1024, 2, as_users_run_it),
        Scenario::Minimal => Machine {
            kernel: files
                .minimal_kernel
                .clone()
                .unwrap_or_else(|| files.kernel.clone()),
            ..stock(1024, 2, as_users_run_it)
        },
        // 2 GiB, so that a balloon of 1 GiB leaves the guest room to run.
        Scenario::Timeline => stock(
            2048,
            2,
            BalloonFeatures {
                deflate_on_oom: true,
                ..as_users_run_it
            },
        ),
        Scenario::Density => stock(1024, 1, as_users_run_it),
        Scenario::BackingAnon | Scenario::BackingThp | Scenario::BackingHugetlb => Machine {
            mem_backing: scenario.backing(),
            ..stock(1024, 2, as_users_run_it)
        },
        // Linux 6.1 sets the order the driver asks for (pageblock order on x86_64) when the
        // balloon's driver registers, over this one: the scenario shows whether it holds.
        Scenario::SlackCmdlineOrder5 => Machine {
            cmdline: format!("{} page_reporting.page_reporting_order=5", files.cmdline)
                .trim()
                .to_string(),
            ..stock(1024, 2, as_users_run_it)
        },
        Scenario::SlackBaseline
        | Scenario::SlackCompact
        | Scenario::SlackOrder5
        | Scenario::SlackOrder0 => stock(1024, 2, as_users_run_it),
    }
}

/// One scenario run with one VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Counted from 1.
    pub number: usize,
    pub repetition: usize,
    pub scenario: Scenario,
    pub vmm: VmmUnderTest,
}

/// Every step of a run, in the order they run. The backings and slack parts run only vmm
/// builds: they compare vmm with itself.
pub fn steps(selection: &Selection, vmms: &[VmmUnderTest], runs: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for repetition in 0..runs {
        for scenario in selection.scenarios() {
            let mut order = vmms.to_vec();
            let turn = repetition % order.len().max(1);
            order.rotate_left(turn);
            for vmm in order {
                if scenario.vmm_only() && vmm.kind != Kind::Vmm {
                    continue;
                }
                steps.push(Step {
                    number: steps.len() + 1,
                    repetition: repetition + 1,
                    scenario,
                    vmm,
                });
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parts_select_scenarios() {
        let sel: Selection = "inflate".parse().unwrap();
        assert_eq!(sel.scenarios(), [Scenario::Timeline]);
        assert!(sel.timeline.inflate && !sel.timeline.reclaim && !sel.timeline.burst);
        let sel: Selection = "density, boot".parse().unwrap();
        assert_eq!(sel.scenarios(), [Scenario::Boot, Scenario::Density]);
        let sel: Selection = "boot,minimal,timeline,density".parse().unwrap();
        assert_eq!(sel, Selection::everything());
        let err = "inflate,speed".parse::<Selection>().unwrap_err();
        assert!(err.contains("\"speed\""), "{err}");
        assert!("".parse::<Selection>().is_err());
        let sel: Selection = "backings".parse().unwrap();
        assert_eq!(sel.scenarios(), Scenario::BACKINGS);
        assert!(!Selection::everything().backings);
        let sel: Selection = "slack".parse().unwrap();
        assert_eq!(sel.scenarios(), Scenario::SLACK);
        assert!(!Selection::everything().slack);
        assert!(Scenario::SLACK.iter().all(|s| s.vmm_only()));
    }

    #[test]
    fn vmms_take_turns_going_first() {
        let vmm = VmmUnderTest::vmm("vmm", Path::new("/vmm"));
        let qemu = VmmUnderTest::qemu(Path::new("/qemu"));
        let sel: Selection = "boot,inflate".parse().unwrap();
        let steps = steps(&sel, &[vmm, qemu], 2);
        let order: Vec<(usize, &str, &str)> = steps
            .iter()
            .map(|s| (s.repetition, s.scenario.name(), s.vmm.name.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (1, "boot", "vmm"),
                (1, "boot", "qemu"),
                (1, "timeline", "vmm"),
                (1, "timeline", "qemu"),
                (2, "boot", "qemu"),
                (2, "boot", "vmm"),
                (2, "timeline", "qemu"),
                (2, "timeline", "vmm"),
            ]
        );
        assert!(steps.iter().enumerate().all(|(i, s)| s.number == i + 1));
    }

    #[test]
    fn backings_run_vmm_builds_only() {
        let vmm = VmmUnderTest::vmm("vmm", Path::new("/vmm"));
        let qemu = VmmUnderTest::qemu(Path::new("/qemu"));
        let sel: Selection = "backings".parse().unwrap();
        let steps = steps(&sel, &[qemu, vmm], 2);
        let order: Vec<(usize, &str, &str)> = steps
            .iter()
            .map(|s| (s.repetition, s.scenario.name(), s.vmm.name.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (1, "backing-anon", "vmm"),
                (1, "backing-thp", "vmm"),
                (1, "backing-hugetlb", "vmm"),
                (2, "backing-anon", "vmm"),
                (2, "backing-thp", "vmm"),
                (2, "backing-hugetlb", "vmm"),
            ]
        );
        assert!(steps.iter().enumerate().all(|(i, s)| s.number == i + 1));
    }

    #[test]
    fn machines_differ_only_where_the_scenario_says() {
        let files = GuestFiles {
            kernel: "/k".into(),
            minimal_kernel: Some("/m".into()),
            initrd: "/i".into(),
            cmdline: "quiet".into(),
        };
        let boot = machine(Scenario::Boot, &files);
        let minimal = machine(Scenario::Minimal, &files);
        assert_eq!(minimal.kernel, PathBuf::from("/m"));
        assert_eq!(
            Machine {
                kernel: "/k".into(),
                ..minimal
            },
            boot
        );
        assert!(machine(Scenario::Timeline, &files).balloon.deflate_on_oom);
        assert!(!boot.balloon.deflate_on_oom);
        assert_eq!(machine(Scenario::Density, &files).cpus, 1);
        assert_eq!(boot.mem_backing, None);
        let hugetlb = machine(Scenario::BackingHugetlb, &files);
        assert_eq!(hugetlb.mem_backing, Some(MemBacking::Hugetlb));
        assert_eq!(
            Machine {
                mem_backing: None,
                ..hugetlb
            },
            boot
        );
        for slack in Scenario::SLACK {
            let m = machine(slack, &files);
            if slack == Scenario::SlackCmdlineOrder5 {
                assert_eq!(m.cmdline, "quiet page_reporting.page_reporting_order=5");
                assert_eq!(
                    Machine {
                        cmdline: "quiet".into(),
                        ..m
                    },
                    boot
                );
            } else {
                assert_eq!(m, boot, "{slack:?}");
            }
        }
    }
}
