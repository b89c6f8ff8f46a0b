//! The kernel command line, built in one place with linux-loader's [`Cmdline`]: what every
//! guest gets ([`BASE_CMDLINE`]), a `virtio_mmio.device=` entry per virtio-mmio device,
//! then what the user adds with `--cmdline`. [`Cmdline`] checks every part and the total
//! length as it goes; [`super::boot::write_cmdline`] copies the result into guest memory.
//!
//! The `virtio_mmio.device=` entries are for kernels built with
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`; stock distribution kernels ignore them and find
//! the same devices in the DSDT.

use linux_loader::cmdline::{Cmdline, Error as LoaderError};
use vm_memory::GuestAddress;

use super::layout::{self, MmioDeviceInfo};

/// The command line every guest gets, before what the user adds: the console on COM1,
/// reboot through the i8042 (which ends vmm), a panic reboots after 1 s (pvpanic has
/// stopped the VM before that, when the guest loads its driver), no PCI bus to probe, and
/// no AUX (mouse) port on the i8042 to look for: the controller has none, and without the
/// option Linux warns that the DSDT describes a keyboard without a mouse.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error(
        "--cmdline {value:?} makes the kernel command line {len} bytes long; the limit is {max}"
    )]
    TooLong {
        value: String,
        len: usize,
        max: usize,
    },
    #[error("--cmdline {value:?} contains a NUL byte")]
    Nul { value: String },
    #[error("--cmdline {value:?}: the kernel command line takes only printable ASCII characters")]
    NotPrintable { value: String },
    #[error("cannot put {what} on the kernel command line: {source}")]
    Entry { what: String, source: LoaderError },
}

/// The kernel command line for a guest with the virtio-mmio `devices`: [`BASE_CMDLINE`],
/// one `virtio_mmio.device=` entry per device, then `extra` (the user's `--cmdline`)
/// without its surrounding whitespace.
pub fn kernel_cmdline(
    extra: Option<&str>,
    devices: &[MmioDeviceInfo],
) -> Result<Cmdline, CmdlineError> {
    let entry_error = |what: String| move |source| CmdlineError::Entry { what, source };
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)
        .map_err(entry_error("the base command line".into()))?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(entry_error("the base command line".into()))?;
    for device in devices {
        cmdline
            .add_virtio_mmio_device(device.len, GuestAddress(device.addr), device.gsi, None)
            .map_err(entry_error(format!(
                "the virtio-mmio device at {:#x}",
                device.addr
            )))?;
    }
    if let Some(extra) = extra.map(str::trim).filter(|extra| !extra.is_empty()) {
        append_user_part(&mut cmdline, extra)?;
    }
    Ok(cmdline)
}

fn append_user_part(cmdline: &mut Cmdline, extra: &str) -> Result<(), CmdlineError> {
    let value = extra.to_string();
    if extra.contains('\0') {
        return Err(CmdlineError::Nul { value });
    }
    let len_before = cmdline_len(cmdline);
    cmdline.insert_str(extra).map_err(|e| match e {
        LoaderError::TooLarge => CmdlineError::TooLong {
            len: len_before + 1 + extra.len(),
            max: layout::CMDLINE_MAX_SIZE - 1,
            value,
        },
        LoaderError::InvalidAscii => CmdlineError::NotPrintable { value },
        source => CmdlineError::Entry {
            what: format!("--cmdline {extra:?}"),
            source,
        },
    })
}

/// The length of `cmdline` in bytes, without the NUL that ends it in guest memory.
pub fn cmdline_len(cmdline: &Cmdline) -> usize {
    cmdline
        .as_cstring()
        .map(|text| text.as_bytes().len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(cmdline: Result<Cmdline, CmdlineError>) -> String {
        cmdline
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap()
    }

    #[test]
    fn command_line_starts_with_the_base_and_ends_with_the_user_part() {
        let devices = [MmioDeviceInfo::slot(0)];
        assert_eq!(
            text(kernel_cmdline(Some(" init=/bin/sh "), &devices)),
            "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux virtio_mmio.device=4K@0xd0000000:5 init=/bin/sh"
        );
        assert_eq!(text(kernel_cmdline(None, &[])), BASE_CMDLINE);
        assert_eq!(text(kernel_cmdline(Some("  "), &[])), BASE_CMDLINE);
    }

    #[test]
    fn each_virtio_mmio_device_gets_an_entry() {
        assert_eq!(
            text(kernel_cmdline(None, &[MmioDeviceInfo::slot(0)])),
            format!("{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5")
        );
        assert_eq!(
            text(kernel_cmdline(
                None,
                &[MmioDeviceInfo::slot(0), MmioDeviceInfo::slot(1)]
            )),
            format!(
                "{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
            )
        );
    }

    #[test]
    fn command_line_limits() {
        // The longest command line that fits: CMDLINE_MAX_SIZE - 1 bytes and the NUL.
        let room = layout::CMDLINE_MAX_SIZE - 1 - BASE_CMDLINE.len() - 1;
        let cmdline = kernel_cmdline(Some(&"x".repeat(room)), &[]).unwrap();
        assert_eq!(cmdline_len(&cmdline), 2047);

        let long = "x".repeat(room + 1);
        let err = kernel_cmdline(Some(&long), &[]).unwrap_err();
        assert!(
            matches!(
                &err,
                CmdlineError::TooLong {
                    len: 2048,
                    max: 2047,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("--cmdline \"xxx"), "{err}");

        let err = kernel_cmdline(Some("a\0b"), &[]).unwrap_err();
        assert!(matches!(err, CmdlineError::Nul { .. }));
        assert_eq!(err.to_string(), "--cmdline \"a\\0b\" contains a NUL byte");

        let err = kernel_cmdline(Some("root=/dev/vdá"), &[]).unwrap_err();
        assert_eq!(
            err,
            CmdlineError::NotPrintable {
                value: "root=/dev/vdá".into()
            }
        );
    }
}
