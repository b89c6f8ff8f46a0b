//! What to run: the [`VmConfig`] the command line fills in, and the checks that can be
//! made on it before anything touches KVM.

use std::path::PathBuf;

use crate::arch::x86_64::boot::{self, BootError};
use crate::console::SerialMode;
use crate::devices::virtio::balloon::BalloonConfig;
use crate::memory::{self, MemoryBacking, MemoryError, HUGE_PAGE_SIZE};
use crate::size::{HumanSize, MIB, PAGE_SIZE};

/// Smallest guest a stock kernel boots in.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 512 * MIB;

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The name of this VM (`--id`), shown by the API.
    pub id: InstanceId,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to [`BASE_CMDLINE`](crate::arch::x86_64::cmdline::BASE_CMDLINE).
    pub cmdline_extra: Option<String>,
    pub mem_size: u64,
    pub mem_backing: MemoryBacking,
    pub vcpus: u8,
    /// The balloon, if `--balloon` was given.
    pub balloon: Option<BalloonConfig>,
    /// Where to serve the API, if `--api-sock` was given.
    pub api_socket: Option<PathBuf>,
    /// Where the guest's serial console goes (`--serial`).
    pub serial: SerialMode,
}

/// The instance ID that names a VM (`--id`), with Firecracker's rule and default, so that
/// tools written for Firecracker's `GET /` read it unchanged: 1 to 64 ASCII letters,
/// digits and hyphens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId(String);

impl InstanceId {
    /// The ID of a VM started without `--id`.
    pub const DEFAULT: &'static str = "anonymous-instance";
    pub const MAX_LENGTH: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        InstanceId(Self::DEFAULT.to_string())
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    #[error("an instance ID needs at least one character")]
    Empty,
    #[error("an instance ID has at most {max} characters; this one has {0}", max = InstanceId::MAX_LENGTH)]
    TooLong(usize),
    #[error("an instance ID holds only ASCII letters, digits and hyphens; {character:?} at position {position} is none of them")]
    BadCharacter { character: char, position: usize },
}

impl std::str::FromStr for InstanceId {
    type Err = InstanceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((position, character)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(InstanceIdError::BadCharacter {
                character,
                position,
            });
        }
        match text.len() {
            0 => Err(InstanceIdError::Empty),
            length if length > Self::MAX_LENGTH => Err(InstanceIdError::TooLong(length)),
            _ => Ok(InstanceId(text.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--cpus {0}: a VM needs at least one vCPU")]
    NoVcpus(u8),
    #[error("--mem {}: not a whole number of 4 KiB pages", HumanSize(*.0))]
    MemoryNotPageAligned(u64),
    #[error("--mem {}: a Linux guest needs at least {}", HumanSize(*.0), HumanSize(MIN_MEMORY))]
    MemoryTooSmall(u64),
    #[error("--mem {}: more than this host has ({} of RAM and swap)", HumanSize(*.requested), HumanSize(*.host))]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("--mem {} with --mem-backing {backing}: not a whole number of 2 MiB huge pages", HumanSize(*.size))]
    MemoryNotHugePageAligned { size: u64, backing: MemoryBacking },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
}

/// Checks what can be checked before touching KVM: the numbers, that the host can back
/// the memory as asked (enough free huge pages for `hugetlb`), and that the kernel and
/// initrd can be read.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    validate_numbers(config)?;
    memory::check_host_supports(config.mem_backing, config.mem_size)?;
    boot::check_kernel(&config.kernel)?;
    if let Some(initrd) = &config.initrd {
        std::fs::File::open(initrd).map_err(|source| BootError::InitrdOpen {
            path: initrd.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn validate_numbers(config: &VmConfig) -> Result<(), ConfigError> {
    if config.vcpus == 0 {
        return Err(ConfigError::NoVcpus(0));
    }
    if config.mem_size % PAGE_SIZE != 0 {
        return Err(ConfigError::MemoryNotPageAligned(config.mem_size));
    }
    if config.mem_size < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(config.mem_size));
    }
    // Every RAM region then starts and ends on a huge page: the regions split at the MMIO
    // hole, which starts and ends on a 2 MiB boundary.
    if config.mem_backing.uses_huge_pages() && config.mem_size % HUGE_PAGE_SIZE != 0 {
        return Err(ConfigError::MemoryNotHugePageAligned {
            size: config.mem_size,
            backing: config.mem_backing,
        });
    }
    if let Some(host) = host_memory() {
        if config.mem_size > host {
            return Err(ConfigError::MemoryTooLarge {
                requested: config.mem_size,
                host,
            });
        }
    }
    Ok(())
}

/// RAM plus swap of the host, from /proc/meminfo.
fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            id: InstanceId::default(),
            kernel: PathBuf::from("/boot/vmlinuz"),
            initrd: None,
            cmdline_extra: None,
            mem_size: DEFAULT_MEMORY,
            mem_backing: MemoryBacking::Anonymous,
            vcpus: 1,
            balloon: None,
            api_socket: None,
            serial: SerialMode::Stdio,
        }
    }

    #[test]
    fn bad_configs_are_refused_with_the_value() {
        let mut cfg = config();
        cfg.vcpus = 0;
        assert_eq!(
            validate_numbers(&cfg).unwrap_err().to_string(),
            "--cpus 0: a VM needs at least one vCPU"
        );
        let mut cfg = config();
        cfg.mem_size = 1000 * 4096 + 1;
        assert!(validate_numbers(&cfg)
            .unwrap_err()
            .to_string()
            .contains("4 KiB pages"));
        cfg.mem_size = 16 * MIB;
        assert_eq!(
            validate_numbers(&cfg).unwrap_err().to_string(),
            "--mem 16 MiB: a Linux guest needs at least 64 MiB"
        );
        cfg.mem_size = 1 << 50;
        assert!(validate_numbers(&cfg)
            .unwrap_err()
            .to_string()
            .starts_with("--mem 1024 TiB: more than this host has"));
        assert!(validate_numbers(&config()).is_ok());
    }

    #[test]
    fn instance_ids_follow_firecrackers_rule() {
        for good in ["anonymous-instance", "a", "VM-42", &"x".repeat(64)] {
            assert_eq!(good.parse::<InstanceId>().unwrap().as_str(), good);
        }
        assert_eq!(InstanceId::default().as_str(), "anonymous-instance");
        assert_eq!("".parse::<InstanceId>(), Err(InstanceIdError::Empty));
        assert_eq!(
            "x".repeat(65).parse::<InstanceId>(),
            Err(InstanceIdError::TooLong(65))
        );
        let err = "vm_1".parse::<InstanceId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "an instance ID holds only ASCII letters, digits and hyphens; '_' at position 2 is none of them"
        );
        // A control character is shown escaped, so the message stays on one line.
        let err = "a\nb".parse::<InstanceId>().unwrap_err();
        assert!(err.to_string().contains("'\\n' at position 1"), "{err}");
        assert!(matches!(
            "é".parse::<InstanceId>(),
            Err(InstanceIdError::BadCharacter {
                character: 'é', ..
            })
        ));
    }

    #[test]
    fn huge_page_backings_need_whole_huge_pages_of_memory() {
        for backing in [MemoryBacking::Thp, MemoryBacking::Hugetlb] {
            let mut cfg = config();
            cfg.mem_backing = backing;
            cfg.mem_size = 1025 * MIB;
            assert_eq!(
                validate_numbers(&cfg).unwrap_err().to_string(),
                format!("--mem 1025 MiB with --mem-backing {backing}: not a whole number of 2 MiB huge pages")
            );
            cfg.mem_size = 1026 * MIB;
            assert!(validate_numbers(&cfg).is_ok());
        }
        let mut cfg = config();
        cfg.mem_backing = MemoryBacking::Memfd;
        cfg.mem_size = 1025 * MIB;
        assert!(validate_numbers(&cfg).is_ok());
    }
}
