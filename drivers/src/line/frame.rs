//! Finding one reply frame in the bytes a binary device sends.

/// Where a binary reply frame ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Frames end with these bytes (kept in the frame).
    End(Vec<u8>),
    /// Frames begin with `start` and hold `byte[at] + add` bytes in all.
    Length {
        /// The first bytes of every frame; anything before them is skipped.
        start: Vec<u8>,
        /// Where the length is, counted from the frame's first byte.
        at: usize,
        /// Added to the length to give the whole frame's size.
        add: usize,
        /// The length as two ASCII hex digits (NEC displays) instead of one byte.
        hex2: bool,
    },
    /// Frames begin with `start` and are `len` bytes long.
    Fixed {
        /// The first bytes of every frame.
        start: Vec<u8>,
        /// The whole frame's size.
        len: usize,
    },
}

/// What the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// A whole frame, taken from the buffer.
    Frame(Vec<u8>),
    /// Not yet a whole frame: read more.
    More,
}

impl Framing {
    /// Takes the first whole frame from `buf`, dropping bytes before a frame's start.
    pub fn cut(&self, buf: &mut Vec<u8>) -> Cut {
        match self {
            Framing::End(end) => match find(buf, end) {
                Some(at) => Cut::Frame(buf.drain(..at + end.len()).collect()),
                None => Cut::More,
            },
            Framing::Length {
                start,
                at,
                add,
                hex2,
            } => {
                let width = if *hex2 { 2 } else { 1 };
                if !resync(buf, start) || buf.len() < at + width {
                    return Cut::More;
                }
                let len = if *hex2 {
                    let digits = std::str::from_utf8(&buf[*at..at + 2])
                        .ok()
                        .and_then(|d| usize::from_str_radix(d, 16).ok());
                    match digits {
                        Some(n) => n + add,
                        None => {
                            // Not a frame after all: look for the next start.
                            buf.drain(..start.len().max(1));
                            return Cut::More;
                        }
                    }
                } else {
                    usize::from(buf[*at]) + add
                };
                if len == 0 {
                    buf.drain(..start.len().max(1));
                    return Cut::More;
                }
                if buf.len() < len {
                    return Cut::More;
                }
                Cut::Frame(buf.drain(..len).collect())
            }
            Framing::Fixed { start, len } => {
                if !resync(buf, start) || buf.len() < *len {
                    return Cut::More;
                }
                Cut::Frame(buf.drain(..*len).collect())
            }
        }
    }
}

/// Drops bytes before `start`; true once the buffer begins with it.
fn resync(buf: &mut Vec<u8>, start: &[u8]) -> bool {
    if start.is_empty() {
        return !buf.is_empty();
    }
    match find(buf, start) {
        Some(0) => true,
        Some(at) => {
            buf.drain(..at);
            true
        }
        None => {
            // Keep a tail that could be the start of `start`.
            let keep = (start.len() - 1).min(buf.len());
            let cut = buf.len() - keep;
            buf.drain(..cut);
            false
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_length_after_resyncing() {
        let f = Framing::Length {
            start: vec![0xaa],
            at: 3,
            add: 5,
            hex2: false,
        };
        let mut buf = vec![0x00, 0x13, 0xaa, 0xff, 0x01, 0x03, 0x41, 0x11];
        assert_eq!(f.cut(&mut buf), Cut::More);
        assert_eq!(buf[0], 0xaa, "garbage before the header is dropped");
        buf.extend([0x01, 0x56, 0xaa]);
        assert_eq!(
            f.cut(&mut buf),
            Cut::Frame(vec![0xaa, 0xff, 0x01, 0x03, 0x41, 0x11, 0x01, 0x56])
        );
        assert_eq!(buf, vec![0xaa]);
        // NEC displays: the length as two hex digits; a BCC of 0D does not end the frame.
        let nec = Framing::Length {
            start: vec![0x01],
            at: 5,
            add: 9,
            hex2: true,
        };
        let mut buf = b"\x0100A".to_vec();
        buf.extend(b"B04\x02BE\x03\x0D\x0D");
        assert_eq!(
            nec.cut(&mut buf),
            Cut::Frame(b"\x0100AB04\x02BE\x03\x0D\x0D".to_vec())
        );
    }

    #[test]
    fn frames_are_cut_at_their_end_bytes() {
        let f = Framing::End(vec![0xff]);
        let mut buf = vec![0x90, 0x41, 0xff, 0x90, 0x51];
        assert_eq!(f.cut(&mut buf), Cut::Frame(vec![0x90, 0x41, 0xff]));
        assert_eq!(f.cut(&mut buf), Cut::More);
        let fixed = Framing::Fixed {
            start: b"*S".to_vec(),
            len: 4,
        };
        let mut buf = b"xx*SAB*S".to_vec();
        assert_eq!(fixed.cut(&mut buf), Cut::Frame(b"*SAB".to_vec()));
    }
}
