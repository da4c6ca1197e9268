//! Structured values read from the front of the fuzzer's bytes; once they run out, every read
//! gives zeros, so any input is a valid one.

/// A cursor over the fuzzer's bytes.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next `n` bytes, or fewer when the input ends.
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub(crate) fn u32(&mut self) -> u32 {
        let mut word = [0; 4];
        let head = self.bytes(4);
        word[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(word)
    }

    pub(crate) fn i32(&mut self) -> i32 {
        self.u32() as i32
    }

    /// Text of at most `max` bytes: a length byte, then that many bytes, read lossily.
    pub(crate) fn text(&mut self, max: usize) -> String {
        let len = usize::from(self.u8()) % (max + 1);
        String::from_utf8_lossy(self.bytes(len)).into_owned()
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}
