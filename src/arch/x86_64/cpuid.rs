//! The CPUID each vCPU sees: what KVM supports (as `-cpu host` would), with the hypervisor
//! bit set and a topology in which vCPU `i` has APIC ID `i`, one thread per core, all
//! cores in one package — the same IDs the MADT and MP table announce.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, "more than one logical processor per package" (HTT).
const EDX_HTT: u32 = 1 << 28;
/// Topology level types in leaves 0xB and 0x1F.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` items: the APIC-ID shift of a topology level.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adapts KVM's supported CPUID for vCPU `index` of `count`.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = u32::from(index);
    let count = u32::from(count);
    for entry in cpuid.as_mut_slice() {
        adapt_entry(entry, apic_id, count);
    }
    cpuid
}

fn adapt_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    match entry.function {
        0x1 => {
            entry.ecx |= ECX_HYPERVISOR;
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size (kept).
            entry.ebx = (apic_id << 24) | (count.min(255) << 16) | (entry.ebx & 0xffff);
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cores = count.clamp(1, 64) - 1;
            entry.eax = (entry.eax & 0x3fff) | (cores << 26);
        }
        0xb | 0x1f => {
            // Extended topology: subleaf 0 is the SMT level (one thread per core),
            // subleaf 1 the core level (every vCPU a core); EDX is the x2APIC ID.
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = LEVEL_TYPE_SMT << 8;
                }
                1 => {
                    entry.eax = id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                }
                n => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = n & 0xff;
                }
            }
            entry.edx = apic_id;
        }
        0x8000_0008 => {
            // AMD: ECX[7:0] is the number of cores in the package - 1, [15:12] its ID bits.
            entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | (count.max(1) - 1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let entry = |function, index, ebx| kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            entry(0x1, 0, 0x0000_0800),
            entry(0x4, 0, 0),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0xb, 2, 0),
            entry(0x8000_0008, 0, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_hypervisor_bit() {
        for index in 0..4u8 {
            let cpuid = vcpu_cpuid(&supported(), index, 4);
            let leaf1 = find(&cpuid, 1, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(index));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(leaf1.edx & EDX_HTT, 0);
            assert_eq!(find(&cpuid, 0xb, 0).edx, u32::from(index));
            assert_eq!(find(&cpuid, 0xb, 1).ebx, 4);
            assert_eq!(find(&cpuid, 0xb, 1).eax, 2);
            assert_eq!(
                find(&cpuid, 0xb, 2).ecx >> 8,
                0,
                "invalid level ends the list"
            );
            assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx & 0xff, 3);
        }
    }

    #[test]
    fn a_single_vcpu_has_no_htt() {
        let cpuid = vcpu_cpuid(&supported(), 0, 1);
        assert_eq!(find(&cpuid, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(8), 3);
        assert_eq!(id_bits(9), 4);
    }
}
