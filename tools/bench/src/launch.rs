//! The VMMs under test and the command line each gets for a machine, so that both boot the
//! same kernel, initramfs, memory, vCPUs and balloon features.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The kernel command line vmm starts with (src/arch/x86_64/cmdline.rs); QEMU is given
/// the same, so both guests boot alike.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux";

/// Seconds between the balloon's statistics requests: what vmm's `--balloon stats` means
/// without a value, and what QEMU is set to through QMP.
pub const STATS_INTERVAL_S: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Vmm,
    Qemu,
}

/// One VMM the benchmark runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmUnderTest {
    /// `vmm`, `qemu`, or `baseline` (another vmm build).
    pub name: String,
    pub kind: Kind,
    /// The program and the arguments that come before the machine's: for QEMU packed
    /// with its libraries, the loader, its options and QEMU's `-L`.
    pub program: Vec<String>,
}

impl VmmUnderTest {
    pub fn vmm(name: &str, binary: &Path) -> VmmUnderTest {
        VmmUnderTest {
            name: name.to_string(),
            kind: Kind::Vmm,
            program: vec![binary.display().to_string()],
        }
    }

    /// QEMU as installed: `qemu-system-x86_64` on the PATH, or the given binary.
    pub fn qemu(binary: &Path) -> VmmUnderTest {
        VmmUnderTest {
            name: "qemu".into(),
            kind: Kind::Qemu,
            program: vec![binary.display().to_string()],
        }
    }

    /// QEMU packed into DIR with its libraries, loader and firmware (scripts/lib.sh,
    /// `bundle_qemu`), as it runs inside the nested KVM host.
    pub fn qemu_bundle(dir: &Path) -> VmmUnderTest {
        let at = |p: &str| dir.join(p).display().to_string();
        VmmUnderTest {
            name: "qemu".into(),
            kind: Kind::Qemu,
            program: vec![
                at("lib/ld-linux-x86-64.so.2"),
                "--library-path".into(),
                at("lib"),
                at("qemu-system-x86_64"),
                "-L".into(),
                at("share"),
            ],
        }
    }
}

/// The balloon's optional features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonFeatures {
    pub reporting: bool,
    pub stats: bool,
    pub deflate_on_oom: bool,
}

/// What backs guest RAM in vmm (`--mem-backing`, docs/balloon.md, "Huge pages").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemBacking {
    Anon,
    Thp,
    Hugetlb,
}

impl MemBacking {
    pub fn name(self) -> &'static str {
        match self {
            MemBacking::Anon => "anon",
            MemBacking::Thp => "thp",
            MemBacking::Hugetlb => "hugetlb",
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub mem_mib: u64,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub balloon: BalloonFeatures,
    /// vmm's `--mem-backing`; `None` leaves vmm's default. Only vmm takes it.
    pub mem_backing: Option<MemBacking>,
    /// Appended to [`BASE_CMDLINE`].
    pub cmdline: String,
}

impl Machine {
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

/// The full command line that boots `machine` with `vmm`, its control socket at `sock`
/// (vmm's API, QEMU's QMP) and the guest console on stdio.
pub fn command_line(vmm: &VmmUnderTest, machine: &Machine, sock: &Path) -> Vec<String> {
    let mut args = vmm.program.clone();
    let b = machine.balloon;
    let s = |x: &str| x.to_string();
    match vmm.kind {
        Kind::Vmm => {
            let features: Vec<&str> = [
                (b.reporting, "page-reporting"),
                (b.stats, "stats"),
                (b.deflate_on_oom, "deflate-on-oom"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
            args.extend([
                s("--kernel"),
                machine.kernel.display().to_string(),
                s("--initrd"),
                machine.initrd.display().to_string(),
                s("--mem"),
                format!("{}M", machine.mem_mib),
                s("--cpus"),
                machine.cpus.to_string(),
                s("--balloon"),
                features.join(","),
                s("--api-sock"),
                sock.display().to_string(),
            ]);
            if let Some(backing) = machine.mem_backing {
                args.extend([s("--mem-backing"), s(backing.name())]);
            }
            if !machine.cmdline.is_empty() {
                args.extend([s("--cmdline"), machine.cmdline.clone()]);
            }
        }
        Kind::Qemu => {
            let on_off = |on: bool| if on { "on" } else { "off" };
            let mut cmdline = BASE_CMDLINE.to_string();
            if !machine.cmdline.is_empty() {
                cmdline = format!("{cmdline} {}", machine.cmdline);
            }
            args.extend([
                s("-machine"),
                s("microvm,acpi=on"),
                s("-accel"),
                s("kvm"),
                s("-cpu"),
                s("host"),
                s("-smp"),
                machine.cpus.to_string(),
                s("-m"),
                format!("{}M", machine.mem_mib),
                s("-name"),
                s("bench,debug-threads=on"),
                s("-nodefaults"),
                s("-no-user-config"),
                s("-display"),
                s("none"),
                s("-no-reboot"),
                s("-serial"),
                s("stdio"),
                s("-device"),
                format!(
                    "virtio-balloon-device,id=balloon0,free-page-reporting={},deflate-on-oom={}",
                    on_off(b.reporting),
                    on_off(b.deflate_on_oom)
                ),
                s("-kernel"),
                machine.kernel.display().to_string(),
                s("-initrd"),
                machine.initrd.display().to_string(),
                s("-append"),
                cmdline,
                s("-qmp"),
                format!("unix:{},server=on,wait=off", sock.display()),
            ]);
        }
    }
    args
}

/// A command line as one could paste it into a shell.
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            mem_mib: 1024,
            cpus: 2,
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs.cpio.gz".into(),
            balloon: BalloonFeatures {
                reporting: true,
                stats: true,
                deflate_on_oom: false,
            },
            mem_backing: None,
            cmdline: "clearcpuid=xsave quiet".into(),
        }
    }

    #[test]
    fn vmm_gets_the_machine_as_flags() {
        let vmm = VmmUnderTest::vmm("vmm", Path::new("/p/vmm"));
        let line = shell_line(&command_line(&vmm, &machine(), Path::new("/tmp/a.sock")));
        assert_eq!(
            line,
            "/p/vmm --kernel /k/vmlinuz --initrd /k/initramfs.cpio.gz --mem 1024M --cpus 2 \
             --balloon page-reporting,stats --api-sock /tmp/a.sock --cmdline 'clearcpuid=xsave quiet'"
        );
        let hugetlb = Machine {
            mem_backing: Some(MemBacking::Hugetlb),
            ..machine()
        };
        let line = shell_line(&command_line(&vmm, &hugetlb, Path::new("/tmp/a.sock")));
        assert!(
            line.contains("--api-sock /tmp/a.sock --mem-backing hugetlb --cmdline"),
            "{line}"
        );
    }

    #[test]
    fn qemu_gets_the_same_machine_and_kernel_command_line() {
        let mut m = machine();
        m.balloon.deflate_on_oom = true;
        let args = command_line(
            &VmmUnderTest::qemu(Path::new("qemu-system-x86_64")),
            &m,
            Path::new("/tmp/q.sock"),
        );
        let line = shell_line(&args);
        assert!(
            line.starts_with(
                "qemu-system-x86_64 -machine microvm,acpi=on -accel kvm -cpu host -smp 2 -m 1024M "
            ),
            "{line}"
        );
        assert!(line.contains("-device virtio-balloon-device,id=balloon0,free-page-reporting=on,deflate-on-oom=on"), "{line}");
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(
            args[append + 1],
            format!("{BASE_CMDLINE} clearcpuid=xsave quiet")
        );
        assert!(
            line.ends_with("-qmp unix:/tmp/q.sock,server=on,wait=off"),
            "{line}"
        );
    }

    #[test]
    fn bundled_qemu_runs_through_its_loader() {
        let q = VmmUnderTest::qemu_bundle(Path::new("/payload/qemu"));
        assert_eq!(
            q.program,
            [
                "/payload/qemu/lib/ld-linux-x86-64.so.2",
                "--library-path",
                "/payload/qemu/lib",
                "/payload/qemu/qemu-system-x86_64",
                "-L",
                "/payload/qemu/share"
            ]
        );
    }

    #[test]
    fn shell_line_quotes_what_a_shell_would_split() {
        assert_eq!(
            shell_line(&["a".into(), "b c".into(), "it's".into(), String::new()]),
            "a 'b c' 'it'\\''s' ''"
        );
    }
}
