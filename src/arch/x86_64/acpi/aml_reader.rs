//! A small reader for the bytes the ACPI tests check: little-endian fields, the AML of the
//! DSDT we generate (names, scopes, devices and their data objects) and the resource
//! templates in `_CRS` buffers. It understands exactly what [`super::create_acpi_tables`]
//! emits and panics on anything else, which is what a test wants.

pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[derive(Debug, Clone, PartialEq)]
pub enum AmlValue {
    Int(u64),
    Str(String),
    Buffer(Vec<u8>),
    Package(Vec<AmlValue>),
}

/// Named objects by absolute path (`\_SB_.V000._HID`), and the device paths.
#[derive(Default, Debug)]
pub struct Namespace {
    names: Vec<(String, AmlValue)>,
    pub devices: Vec<String>,
}

impl Namespace {
    pub fn get(&self, path: &str) -> Option<&AmlValue> {
        self.names.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }
}

/// Returns (length, bytes used by the encoding).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let lead = b[0];
    let follow = (lead >> 6) as usize;
    if follow == 0 {
        return ((lead & 0x3f) as usize, 1);
    }
    let mut len = (lead & 0x0f) as usize;
    for i in 0..follow {
        len |= (b[1 + i] as usize) << (4 + 8 * i);
    }
    (len, 1 + follow)
}

/// Returns (segments, is_root, bytes used).
fn name_string(b: &[u8]) -> (Vec<String>, bool, usize) {
    let mut i = 0;
    let root = b[0] == b'\\';
    if root {
        i += 1;
    }
    assert_ne!(b[i], b'^', "parent prefixes are not expected");
    let count = match b[i] {
        0x00 => {
            return (vec![], root, i + 1);
        }
        0x2e => {
            i += 1;
            2
        }
        0x2f => {
            i += 2;
            b[i - 1] as usize
        }
        _ => 1,
    };
    let segs = (0..count)
        .map(|k| String::from_utf8(b[i + 4 * k..i + 4 * k + 4].to_vec()).unwrap())
        .collect();
    (segs, root, i + 4 * count)
}

fn join(scope: &[String], segs: Vec<String>, root: bool) -> Vec<String> {
    let mut path = if root { vec![] } else { scope.to_vec() };
    path.extend(segs);
    path
}

fn path_string(path: &[String]) -> String {
    format!("\\{}", path.join("."))
}

/// Parses one data object; returns it and the bytes it took.
fn data_object(b: &[u8]) -> (AmlValue, usize) {
    match b[0] {
        0x00 => (AmlValue::Int(0), 1),
        0x01 => (AmlValue::Int(1), 1),
        0xff => (AmlValue::Int(u64::MAX), 1),
        0x0a => (AmlValue::Int(b[1] as u64), 2),
        0x0b => (AmlValue::Int(u16_at(b, 1) as u64), 3),
        0x0c => (AmlValue::Int(u32_at(b, 1) as u64), 5),
        0x0e => (AmlValue::Int(u64_at(b, 1)), 9),
        0x0d => {
            let end = b[1..].iter().position(|&c| c == 0).unwrap() + 1;
            (
                AmlValue::Str(String::from_utf8(b[1..end].to_vec()).unwrap()),
                end + 1,
            )
        }
        0x11 => {
            let (len, used) = pkg_length(&b[1..]);
            let end = 1 + len;
            let (size, size_used) = data_object(&b[1 + used..]);
            let AmlValue::Int(size) = size else {
                panic!("buffer size is not an integer")
            };
            let data = b[1 + used + size_used..end].to_vec();
            assert_eq!(data.len() as u64, size, "buffer size matches its bytes");
            (AmlValue::Buffer(data), end)
        }
        0x12 => {
            let (len, used) = pkg_length(&b[1..]);
            let end = 1 + len;
            let count = b[1 + used] as usize;
            let mut off = 2 + used;
            let mut elements = Vec::new();
            while off < end {
                let (v, n) = data_object(&b[off..end]);
                elements.push(v);
                off += n;
            }
            assert_eq!(elements.len(), count, "package element count");
            (AmlValue::Package(elements), end)
        }
        op => panic!("unexpected AML data opcode {op:#x}"),
    }
}

fn term_list(b: &[u8], scope: &[String], ns: &mut Namespace) {
    let mut off = 0;
    while off < b.len() {
        match b[off] {
            0x08 => {
                let (segs, root, used) = name_string(&b[off + 1..]);
                let path = join(scope, segs, root);
                let (value, n) = data_object(&b[off + 1 + used..]);
                ns.names.push((path_string(&path), value));
                off += 1 + used + n;
            }
            0x10 => {
                let (len, used) = pkg_length(&b[off + 1..]);
                let end = off + 1 + len;
                let (segs, root, n) = name_string(&b[off + 1 + used..]);
                let path = join(scope, segs, root);
                term_list(&b[off + 1 + used + n..end], &path, ns);
                off = end;
            }
            0x5b if b[off + 1] == 0x82 => {
                let (len, used) = pkg_length(&b[off + 2..]);
                let end = off + 2 + len;
                let (segs, root, n) = name_string(&b[off + 2 + used..]);
                let path = join(scope, segs, root);
                ns.devices.push(path_string(&path));
                term_list(&b[off + 2 + used + n..end], &path, ns);
                off = end;
            }
            op => panic!("unexpected AML opcode {op:#x} at {off}"),
        }
    }
    assert_eq!(off, b.len(), "term list overran its package");
}

pub fn parse_dsdt(dsdt: &[u8]) -> Namespace {
    let mut ns = Namespace::default();
    term_list(&dsdt[36..], &[], &mut ns);
    ns
}

#[derive(Debug, PartialEq)]
pub enum Resource {
    Memory32Fixed {
        writeable: bool,
        base: u32,
        len: u32,
    },
    ExtendedIrq {
        flags: u8,
        irqs: Vec<u32>,
    },
    Io {
        decode16: bool,
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
}

/// Decodes a resource template up to its end tag.
pub fn resources(b: &[u8]) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let tag = b[off];
        if tag & 0x80 != 0 {
            let len = u16_at(b, off + 1) as usize;
            let d = &b[off + 3..off + 3 + len];
            match tag {
                0x86 => {
                    assert_eq!(len, 9);
                    out.push(Resource::Memory32Fixed {
                        writeable: d[0] & 1 != 0,
                        base: u32_at(d, 1),
                        len: u32_at(d, 5),
                    });
                }
                0x89 => {
                    let count = d[1] as usize;
                    assert_eq!(len, 2 + 4 * count);
                    out.push(Resource::ExtendedIrq {
                        flags: d[0],
                        irqs: (0..count).map(|k| u32_at(d, 2 + 4 * k)).collect(),
                    });
                }
                other => panic!("unexpected large resource {other:#x}"),
            }
            off += 3 + len;
        } else {
            let (kind, len) = (tag >> 3, (tag & 7) as usize);
            let d = &b[off + 1..off + 1 + len];
            match kind {
                0x08 => out.push(Resource::Io {
                    decode16: d[0] & 1 != 0,
                    min: u16_at(d, 1),
                    max: u16_at(d, 3),
                    align: d[5],
                    len: d[6],
                }),
                0x0f => {
                    assert_eq!(off + 2, b.len(), "end tag ends the template");
                    return out;
                }
                other => panic!("unexpected small resource {other:#x}"),
            }
            off += 1 + len;
        }
    }
}

/// Consumer, edge-triggered, active high, exclusive.
pub const EDGE_HIGH_EXCLUSIVE_CONSUMER: u8 = 0b0011;

pub fn eisa_id_string(id: u32) -> String {
    let v = id.swap_bytes();
    let c = |shift: u32| (((v >> shift) & 0x1f) as u8 + 0x40) as char;
    format!("{}{}{}{:04X}", c(26), c(21), c(16), v & 0xffff)
}
