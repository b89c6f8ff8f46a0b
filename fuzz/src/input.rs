//! The byte format every target reads: fixed-width little-endian integers and
//! length-prefixed byte strings, read in order. Running out of data is not an error: every
//! read past the end yields zeros (or nothing), so any input is a valid one and the
//! fuzzer never wastes runs on inputs a stricter format would refuse.

/// Reads a fuzz input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes; fewer if the input ends first.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A byte string with a one-byte length in front.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let len = self.u8();
        self.bytes(len.into())
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Writes inputs in the format [`Input`] reads: the seeds are built with it.
#[derive(Debug, Default, Clone)]
pub struct Script {
    bytes: Vec<u8>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn u8(&mut self, value: u8) -> &mut Script {
        self.bytes.push(value);
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Script {
        self.u8(value.into())
    }

    pub fn u16(&mut self, value: u16) -> &mut Script {
        self.bytes(&value.to_le_bytes())
    }

    pub fn u32(&mut self, value: u32) -> &mut Script {
        self.bytes(&value.to_le_bytes())
    }

    pub fn u64(&mut self, value: u64) -> &mut Script {
        self.bytes(&value.to_le_bytes())
    }

    /// Raw bytes, no length.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Script {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// What [`Input::short_bytes`] reads. At most 255 bytes.
    pub fn short_bytes(&mut self, bytes: &[u8]) -> &mut Script {
        assert!(bytes.len() <= 255, "a short byte string holds 255 bytes");
        self.u8(bytes.len() as u8).bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_script_wrote_then_zeros() {
        let mut script = Script::new();
        script
            .u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1)
            .short_bytes(b"abc")
            .bool(true);
        let bytes = script.into_bytes();
        let mut input = Input::new(&bytes);
        assert_eq!(input.u8(), 7);
        assert_eq!(input.u16(), 0x1234);
        assert_eq!(input.u32(), 0xdead_beef);
        assert_eq!(input.u64(), u64::MAX - 1);
        assert_eq!(input.short_bytes(), b"abc");
        assert!(input.bool());
        assert!(input.is_empty());
        assert_eq!(input.u64(), 0);
        assert_eq!(input.short_bytes(), b"");
    }

    #[test]
    fn a_short_read_keeps_the_bytes_there_were() {
        let mut input = Input::new(&[0x01, 0x02]);
        assert_eq!(input.u32(), 0x0201);
        let mut input = Input::new(&[5, 1, 2]);
        assert_eq!(input.short_bytes(), &[1, 2]);
    }
}
