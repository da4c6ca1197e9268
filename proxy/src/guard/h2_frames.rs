//! What the h2 layer does not limit: control frames a client may send without end. Each
//! SETTINGS and PING a client sends must be acknowledged, so a flood of them keeps the proxy
//! writing and burns its CPU; the h2 library answers every one. [`FrameWatch`] reads the frame
//! headers of the bytes an HTTP/2 client sends (after its preface) and says when its SETTINGS
//! and PINGs outrun a budget: a burst of [`CONTROL_BURST`], then [`CONTROL_PER_SECOND`].

use std::time::Instant;

/// Control frames a client may send at once (a connection's start sends one or two).
pub const CONTROL_BURST: u32 = 100;
/// Control frames a client may send each second beyond the burst.
pub const CONTROL_PER_SECOND: u32 = 10;

const FRAME_HEAD: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// The frames of one client, read as they arrive.
#[derive(Debug)]
pub struct FrameWatch {
    head: [u8; FRAME_HEAD],
    filled: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    tokens: u32,
    refilled: Instant,
}

impl FrameWatch {
    /// A client's first frame comes next.
    pub fn new(now: Instant) -> FrameWatch {
        FrameWatch {
            head: [0; FRAME_HEAD],
            filled: 0,
            skip: 0,
            tokens: CONTROL_BURST,
            refilled: now,
        }
    }

    /// Reads `bytes`, which came at `now`; `false` once the client sent more SETTINGS and PINGs
    /// than its budget.
    pub fn read(&mut self, mut bytes: &[u8], now: Instant) -> bool {
        let mut within = true;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let passed = self.skip.min(bytes.len());
                self.skip -= passed;
                bytes = &bytes[passed..];
                continue;
            }
            let taken = (FRAME_HEAD - self.filled).min(bytes.len());
            self.head[self.filled..self.filled + taken].copy_from_slice(&bytes[..taken]);
            self.filled += taken;
            bytes = &bytes[taken..];
            if self.filled < FRAME_HEAD {
                break;
            }
            self.filled = 0;
            let [l0, l1, l2, kind, flags, ..] = self.head;
            self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if (kind == SETTINGS || kind == PING) && flags & ACK == 0 && !self.spend(now) {
                within = false;
            }
        }
        within
    }

    /// Takes one control frame from the budget, refilled by the time passed.
    fn spend(&mut self, now: Instant) -> bool {
        let seconds = now.saturating_duration_since(self.refilled).as_secs();
        if seconds > 0 {
            let earned = u32::try_from(seconds)
                .unwrap_or(u32::MAX)
                .saturating_mul(CONTROL_PER_SECOND);
            self.tokens = self.tokens.saturating_add(earned).min(CONTROL_BURST);
            self.refilled += std::time::Duration::from_secs(seconds);
        }
        match self.tokens.checked_sub(1) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn settings_and_pings_beyond_the_budget_are_a_flood_whatever_the_reads() {
        let now = Instant::now();
        let mut watch = FrameWatch::new(now);
        let settings = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]);
        let mut stream = Vec::new();
        for i in 0..CONTROL_BURST {
            stream.extend(if i % 2 == 0 {
                settings.clone()
            } else {
                frame(PING, 0, &[7; 8])
            });
        }
        // Byte by byte, frames split across reads.
        for byte in &stream {
            assert!(watch.read(std::slice::from_ref(byte), now));
        }
        assert!(!watch.read(&settings, now));
    }

    #[test]
    fn acks_data_and_headers_cost_nothing_and_the_budget_refills() {
        let start = Instant::now();
        let mut watch = FrameWatch::new(start);
        let mut stream = Vec::new();
        for _ in 0..1000 {
            stream.extend(frame(SETTINGS, ACK, &[]));
            stream.extend(frame(PING, ACK, &[0; 8]));
            stream.extend(frame(0x0, 0, &[b'x'; 300]));
            stream.extend(frame(0x1, 0x4, &[0x82, 0x84]));
        }
        assert!(watch.read(&stream, start));
        let ping = frame(PING, 0, &[1; 8]);
        for _ in 0..CONTROL_BURST {
            assert!(watch.read(&ping, start));
        }
        assert!(!watch.read(&ping, start));
        let later = start + Duration::from_secs(2);
        for _ in 0..2 * CONTROL_PER_SECOND {
            assert!(watch.read(&ping, later));
        }
        assert!(!watch.read(&ping, later));
    }
}
