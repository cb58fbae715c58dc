//! Line framing: bytes read from a file in, complete lines with their file offsets out.
//!
//! [`LineFramer`] is fed the bytes of a file in order, in chunks of any size. It emits each complete
//! line (without `\n` or a trailing `\r`) with the offset of its first byte. A partial last line is
//! held back until its newline arrives. A line longer than the cap is emitted once, cut at the cap
//! (on a UTF-8 boundary where one is near) and flagged `truncated`; the rest of it is skipped
//! without being buffered, so memory stays at most one cap plus one chunk whatever the input.
//!
//! [`LineFramer::position`] is where a restart must resume: the offset of the first byte that is
//! not yet accounted for by an emitted line, and whether that byte is inside a line that was
//! already emitted truncated (and must be skipped to its end).

/// One framed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line's bytes, without its terminator; at most the cap.
    pub bytes: &'a [u8],
    /// Offset of the line's first byte in the file.
    pub offset: u64,
    /// The line was longer than the cap and was cut.
    pub truncated: bool,
}

/// Where framing stands in a file: enough to resume after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Offset of the first byte not yet accounted for by an emitted line.
    pub offset: u64,
    /// The bytes from `offset` on belong to a line already emitted as truncated: skip them up to
    /// and including the next newline.
    pub skipping: bool,
}

/// Splits a byte stream into lines; see the module docs.
#[derive(Debug)]
pub struct LineFramer {
    max_line: usize,
    /// Bytes of a partial line (never more than `max_line`).
    partial: Vec<u8>,
    /// File offset of `partial[0]`, or of the next byte when `partial` is empty.
    partial_offset: u64,
    /// File offset of the next byte to be pushed.
    read_offset: u64,
    skipping: bool,
}

impl LineFramer {
    /// A framer resuming at `position`, cutting lines at `max_line` bytes (at least 1).
    pub fn new(max_line: usize, position: Position) -> Self {
        Self {
            max_line: max_line.max(1),
            partial: Vec::new(),
            partial_offset: position.offset,
            read_offset: position.offset,
            skipping: position.skipping,
        }
    }

    /// Where a restart must resume (see [`Position`]).
    pub fn position(&self) -> Position {
        if self.skipping {
            Position { offset: self.read_offset, skipping: true }
        } else {
            Position { offset: self.partial_offset, skipping: false }
        }
    }

    /// Offset of the next byte to be pushed (the reader's file position).
    pub fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// Bytes held back as a partial line.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Feed the next bytes of the file; `emit` is called for each line completed by them (and for
    /// the first `max_line` bytes of an over-long line, as soon as they are seen).
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Line<'_>)) {
        while !data.is_empty() {
            if self.skipping {
                match memchr::memchr(b'\n', data) {
                    None => {
                        self.advance(data.len());
                        return;
                    }
                    Some(nl) => {
                        self.advance(nl + 1);
                        data = &data[nl + 1..];
                        self.skipping = false;
                        self.partial_offset = self.read_offset;
                        continue;
                    }
                }
            }
            if !self.partial.is_empty() {
                // Complete the held-back line first.
                let nl = memchr::memchr(b'\n', data);
                let take = nl.unwrap_or(data.len());
                let room = self.max_line - self.partial.len();
                if take > room {
                    self.partial.extend_from_slice(&data[..room]);
                    self.emit_truncated_partial(&mut emit);
                    // The rest of this line is skipped by the loop's next turn.
                    self.advance(room);
                    data = &data[room..];
                    continue;
                }
                self.partial.extend_from_slice(&data[..take]);
                self.advance(take);
                data = &data[take..];
                if nl.is_some() {
                    let line = trim_cr(&self.partial);
                    emit(Line { bytes: line, offset: self.partial_offset, truncated: false });
                    self.partial.clear();
                    self.advance(1);
                    data = &data[1..];
                    self.partial_offset = self.read_offset;
                }
                continue;
            }
            // Fast path: lines straight out of `data`, no copy.
            match memchr::memchr(b'\n', data) {
                Some(nl) => {
                    let offset = self.read_offset;
                    if nl > self.max_line {
                        emit(Line { bytes: cut(&data[..self.max_line]), offset, truncated: true });
                    } else {
                        emit(Line { bytes: trim_cr(&data[..nl]), offset, truncated: false });
                    }
                    self.advance(nl + 1);
                    data = &data[nl + 1..];
                    self.partial_offset = self.read_offset;
                }
                None => {
                    if data.len() > self.max_line {
                        let offset = self.read_offset;
                        emit(Line { bytes: cut(&data[..self.max_line]), offset, truncated: true });
                        self.skipping = true;
                        self.advance(data.len());
                    } else {
                        self.partial_offset = self.read_offset;
                        self.partial.extend_from_slice(data);
                        self.advance(data.len());
                    }
                    return;
                }
            }
        }
    }

    /// The file ends here: emit the line held back for its newline, if any (a file rotated away
    /// or deleted whose writer never ended its last line).
    pub fn finish(&mut self, mut emit: impl FnMut(Line<'_>)) {
        if self.partial.is_empty() {
            return;
        }
        emit(Line { bytes: trim_cr(&self.partial), offset: self.partial_offset, truncated: false });
        self.partial.clear();
        self.partial_offset = self.read_offset;
    }

    fn emit_truncated_partial(&mut self, emit: &mut impl FnMut(Line<'_>)) {
        emit(Line { bytes: cut(&self.partial), offset: self.partial_offset, truncated: true });
        self.partial.clear();
        self.skipping = true;
    }

    fn advance(&mut self, n: usize) {
        self.read_offset += n as u64;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Cut a truncated line back to the start of its last character when the cap fell inside that
/// character, so that a valid UTF-8 line does not turn invalid only because of where it was cut.
fn cut(bytes: &[u8]) -> &[u8] {
    let n = bytes.len();
    for i in (n.saturating_sub(4)..n).rev() {
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: the character starts further back
        }
        let need = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if n - i >= need { bytes } else { &bytes[..i] };
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Owned(Vec<u8>, u64, bool);

    fn frame(max: usize, chunks: &[&[u8]]) -> (Vec<Owned>, LineFramer) {
        let mut f = LineFramer::new(max, Position::default());
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, |l| out.push(Owned(l.bytes.to_vec(), l.offset, l.truncated)));
        }
        (out, f)
    }

    #[test]
    fn lines_and_offsets() {
        let (out, f) = frame(100, &[b"ab\ncd\r\n\nef"]);
        assert_eq!(
            out,
            vec![Owned(b"ab".to_vec(), 0, false), Owned(b"cd".to_vec(), 3, false), Owned(vec![], 7, false)]
        );
        assert_eq!(f.position(), Position { offset: 8, skipping: false });
        assert_eq!(f.pending(), 2);
        assert_eq!(f.read_offset(), 10);
        // The file ends: the held-back line is emitted, and the position moves past it.
        let mut last = Vec::new();
        let mut f = f;
        f.finish(|l| last.push(Owned(l.bytes.to_vec(), l.offset, l.truncated)));
        f.finish(|l| last.push(Owned(l.bytes.to_vec(), l.offset, l.truncated)));
        assert_eq!(last, vec![Owned(b"ef".to_vec(), 8, false)], "emitted once");
        assert_eq!((f.position(), f.pending()), (Position { offset: 10, skipping: false }, 0));
    }

    #[test]
    fn partial_line_completes_across_chunks_of_any_size() {
        let text = b"first line\r\nsecond\nthird one is longer\n";
        let whole = frame(100, &[text]).0;
        for size in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(frame(100, &chunks).0, whole, "chunk size {size}");
        }
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[2], Owned(b"third one is longer".to_vec(), 19, false));
    }

    #[test]
    fn long_lines_are_cut_once_and_skipped_in_any_chunking() {
        let mut text = b"ok\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 50));
        text.extend_from_slice(b"\nafter\n");
        for size in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            let (out, f) = frame(10, &chunks);
            assert_eq!(
                out,
                vec![
                    Owned(b"ok".to_vec(), 0, false),
                    Owned(vec![b'x'; 10], 3, true),
                    Owned(b"after".to_vec(), 54, false)
                ],
                "chunk size {size}"
            );
            assert_eq!(f.position(), Position { offset: text.len() as u64, skipping: false });
        }
    }

    #[test]
    fn a_10_mb_line_uses_bounded_memory() {
        let cap = 64 * 1024;
        let mut f = LineFramer::new(cap, Position::default());
        let chunk = vec![b'y'; 256 * 1024];
        let mut lines = 0;
        for _ in 0..40 {
            f.push(&chunk, |l| {
                lines += 1;
                assert!(l.truncated);
                assert_eq!(l.bytes.len(), cap);
            });
            assert!(f.pending() <= cap);
        }
        f.push(b"\nz\n", |l| {
            lines += 1;
            assert_eq!(l.bytes, b"z");
        });
        assert_eq!(lines, 2);
    }

    #[test]
    fn restart_while_skipping_resumes_skipping() {
        let (_, f) = frame(4, &[b"0123456789"]);
        let pos = f.position();
        assert_eq!(pos, Position { offset: 10, skipping: true });
        let mut g = LineFramer::new(4, pos);
        let mut out = Vec::new();
        g.push(b"abc\nnext\n", |l| out.push(l.bytes.to_vec()));
        assert_eq!(out, vec![b"next".to_vec()]);
    }

    #[test]
    fn cut_keeps_utf8_valid_when_cap_splits_a_character() {
        // "é" is two bytes; a cap of 3 would split the second one.
        let (out, _) = frame(3, &["aéé\n".as_bytes()]);
        assert_eq!(out[0].0, "aé".as_bytes());
        assert!(out[0].2);
    }

    #[test]
    fn binary_garbage_never_panics() {
        let mut state = 7_u64;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let mut total = 0;
        for size in [1, 7, 4096] {
            let (out, f) = frame(1000, &data.chunks(size).collect::<Vec<_>>());
            let consumed: u64 = out.iter().map(|l| l.0.len() as u64).sum();
            assert!(consumed <= data.len() as u64);
            assert!(f.position().offset <= data.len() as u64);
            total += out.len();
        }
        assert!(total > 0);
    }
}
