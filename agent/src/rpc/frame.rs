//! ttrpc framing on a byte stream, as pure code over a buffer (no socket):
//! a 10-byte header (payload length u32 BE, stream id u32 BE, type u8,
//! flags u8), then the payload.
//!
//! [`FrameReader`] takes whatever bytes a non-blocking read returned and
//! yields whole frames. A frame longer than ttrpc's limit is not buffered:
//! its payload is skipped as it arrives and it is reported as
//! [`Frame::Oversize`], so the server can answer it with an error and the
//! stream stays in step (as ttrpc's own server does).

use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX};

/// Capacity a reader keeps between frames; a larger buffer (a big request
/// was read into it) is given back once it is empty, so a 2 MiB `Exec`
/// stdin does not stay resident in the guest.
pub const KEEP_CAPACITY: usize = 16 * 1024;
/// The most room one [`FrameReader::spare`] offers: the buffer of a large
/// frame grows as its bytes arrive, not all at once on its header's word.
pub const READ_MAX: usize = 256 * 1024;

/// One item from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame.
    Message(MessageHeader, Vec<u8>),
    /// A frame whose payload exceeded [`MESSAGE_LENGTH_MAX`]; its payload
    /// is being skipped.
    Oversize(MessageHeader),
}

/// Accumulates stream bytes and splits them into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Payload bytes of an oversize frame still to skip.
    skip: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for at least `min` more bytes, to read into; call
    /// [`filled`](Self::filled) with how many were written.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let len = self.buf.len();
        // What the frame being read still needs, if more than `min` (up
        // to READ_MAX): few reads take a large request (not while skipping).
        let want = if self.skip > 0 {
            min
        } else {
            self.pending_len()
                .saturating_sub(len)
                .min(READ_MAX)
                .max(min)
        };
        self.buf.resize(len + want, 0);
        &mut self.buf[len..]
    }

    /// `n` bytes of the last [`spare`](Self::spare) slice hold data.
    pub fn filled(&mut self, spare_len: usize, n: usize) {
        let keep = self.buf.len() - spare_len + n.min(spare_len);
        self.buf.truncate(keep);
    }

    /// Appends `bytes` (for tests and fuzzing; the server reads in place).
    pub fn push(&mut self, bytes: &[u8]) {
        let spare = self.spare(bytes.len());
        let len = spare.len();
        spare[..bytes.len()].copy_from_slice(bytes);
        self.filled(len, bytes.len());
    }

    /// The whole frame length (header + payload) the buffered header asks
    /// for; 0 without a whole header or for an oversize frame (skipped).
    fn pending_len(&self) -> usize {
        match self.buf.get(..MESSAGE_HEADER_LENGTH) {
            Some(h) => match MessageHeader::from(h).length as usize {
                len if len <= MESSAGE_LENGTH_MAX => MESSAGE_HEADER_LENGTH + len,
                _ => 0,
            },
            None => 0,
        }
    }

    /// The next whole frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.drain(..n);
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        let header = self.buf.get(..MESSAGE_HEADER_LENGTH)?;
        let mh = MessageHeader::from(header);
        let len = mh.length as usize;
        if len > MESSAGE_LENGTH_MAX {
            self.buf.drain(..MESSAGE_HEADER_LENGTH);
            self.skip = len;
            // Skip what is already here now, so `is_idle` is right.
            let n = self.skip.min(self.buf.len());
            self.buf.drain(..n);
            self.skip -= n;
            self.shrink();
            return Some(Frame::Oversize(mh));
        }
        let end = MESSAGE_HEADER_LENGTH + len;
        if self.buf.len() < end {
            return None;
        }
        let payload = self.buf[MESSAGE_HEADER_LENGTH..end].to_vec();
        self.buf.drain(..end);
        self.shrink();
        Some(Frame::Message(mh, payload))
    }

    /// Gives back a large buffer once nothing is in it.
    fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::with_capacity(KEEP_CAPACITY);
        }
    }

    /// Nothing buffered and nothing being skipped: the stream is between
    /// frames.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.skip == 0
    }
}

/// The 10 header bytes of a frame.
pub fn header_bytes(mh: MessageHeader) -> [u8; MESSAGE_HEADER_LENGTH] {
    let v: Vec<u8> = mh.into();
    let mut out = [0u8; MESSAGE_HEADER_LENGTH];
    out.copy_from_slice(&v[..MESSAGE_HEADER_LENGTH]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn frame(stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v =
            header_bytes(MessageHeader::new_request(stream_id, payload.len() as u32)).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_layout_is_ttrpcs() {
        let h = header_bytes(MessageHeader::new_response(0x0102_0304, 0x0a0b_0c0d));
        assert_eq!(h, [0x0a, 0x0b, 0x0c, 0x0d, 1, 2, 3, 4, 2, 0]);
    }

    #[test]
    fn frames_split_at_any_byte_boundary() {
        let mut stream = frame(1, b"hello");
        stream.extend(frame(3, b""));
        stream.extend(frame(5, &[7u8; 5000]));
        for chunk in [1, 2, 9, 10, 11, 4096, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                r.push(c);
                while let Some(f) = r.next_frame() {
                    got.push(f);
                }
            }
            assert!(r.is_idle(), "chunk {chunk}");
            let ids: Vec<_> = got
                .iter()
                .map(|f| match f {
                    Frame::Message(h, p) => (h.stream_id, p.len()),
                    Frame::Oversize(h) => panic!("oversize {h:?}"),
                })
                .collect();
            assert_eq!(ids, [(1, 5), (3, 0), (5, 5000)], "chunk {chunk}");
        }
    }

    #[test]
    fn an_oversize_frame_is_reported_and_skipped() {
        let big = MESSAGE_LENGTH_MAX + 3;
        let mut r = FrameReader::new();
        r.push(&header_bytes(MessageHeader::new_request(9, big as u32)));
        r.push(&[1, 2]);
        match r.next_frame() {
            Some(Frame::Oversize(h)) => assert_eq!((h.stream_id, h.length as usize), (9, big)),
            other => panic!("{other:?}"),
        }
        assert!(!r.is_idle());
        // The rest of its payload, in pieces, then a normal frame.
        let rest = vec![0u8; big - 2];
        for c in rest.chunks(1 << 20) {
            r.push(c);
            assert_eq!(r.next_frame(), None);
        }
        r.push(&frame(11, b"x"));
        assert_eq!(
            r.next_frame(),
            Some(Frame::Message(
                MessageHeader::new_request(11, 1),
                b"x".to_vec()
            ))
        );
        assert!(r.is_idle());
    }

    #[test]
    fn spare_room_covers_the_frame_being_read() {
        let mut r = FrameReader::new();
        r.push(&header_bytes(MessageHeader::new_request(1, 100_000)));
        let spare = r.spare(4096).len();
        assert_eq!(spare, 100_000, "one read can take the whole payload");
        r.filled(spare, 0);
        // A larger one grows as it arrives.
        let mut r = FrameReader::new();
        r.push(&header_bytes(MessageHeader::new_request(1, 3 << 20)));
        assert_eq!(r.spare(4096).len(), READ_MAX);
        // A header claiming more than the limit is skipped, not buffered.
        let mut r = FrameReader::new();
        r.push(&header_bytes(MessageHeader::new_request(1, u32::MAX)));
        assert_eq!(r.spare(1).len(), 1);
    }

    #[test]
    fn garbage_streams_never_yield_more_than_came_in() {
        // A fixed pseudo-random byte stream (LCG), small lengths mostly.
        let mut x: u32 = 0x1234_5678;
        let mut next = move || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        };
        for round in 0..200 {
            let bytes: Vec<u8> = (0..512)
                .map(|i| {
                    if i % 10 < 3 && round % 2 == 0 {
                        0
                    } else {
                        next()
                    }
                })
                .collect();
            let mut r = FrameReader::new();
            let mut taken = 0;
            for c in bytes.chunks(1 + round % 37) {
                r.push(c);
                while let Some(f) = r.next_frame() {
                    taken += MESSAGE_HEADER_LENGTH
                        + match f {
                            Frame::Message(h, p) => {
                                assert_eq!(p.len(), h.length as usize);
                                p.len()
                            }
                            Frame::Oversize(_) => 0,
                        };
                }
            }
            assert!(taken <= bytes.len());
        }
    }

    #[test]
    fn a_big_buffer_is_given_back_when_empty() {
        let mut r = FrameReader::new();
        r.push(&frame(1, &vec![0u8; 1 << 20]));
        assert!(matches!(r.next_frame(), Some(Frame::Message(..))));
        assert!(r.buf.capacity() <= KEEP_CAPACITY);
    }
}
