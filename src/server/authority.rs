//! Rewrites the `:authority` of HTTP/2 requests read from a Unix socket to `localhost`.
//!
//! gRPC's C core (Python, C++, Ruby, PHP clients, so py-spiffe) sends the percent-encoded socket
//! path as `:authority` on a Unix socket (`tmp%2Fspire%2Fapi.sock`), and grpc-java sends the
//! path itself. The `h2` crate under tonic rejects such a request with `RST_STREAM
//! PROTOCOL_ERROR` (hyperium/h2 #487, still open), so those SPIFFE clients could not talk to us.
//! On a Unix socket the authority means nothing — requests are routed by `:path` — so the
//! request stream is rewritten before `h2` reads it: every literal `:authority` field gets the
//! value `localhost`, cut to the original value's length when that is shorter. The server's HPACK
//! table then holds `:authority: localhost` where the client's holds its own value. Because no
//! entry on the server's side is larger than the client's, the server evicts no entry the client
//! still has, and both sides agree on every index the client uses (RFC 7541 §4.4). A
//! Huffman-coded value's decoded length is bounded below by its coded length (a symbol takes at
//! most 30 bits), and the replacement stays within that bound.
//!
//! Only header blocks are touched; every other frame passes through byte for byte. A block that
//! does not parse, or is larger than [`MAX_BLOCK`], passes unchanged for `h2` to judge.

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const END_STREAM: u8 = 0x1;
/// The frame size every HTTP/2 peer must accept (tonic does not raise it).
const MAX_FRAME: usize = 16_384;
/// Largest header block rewritten; larger ones pass unchanged.
pub const MAX_BLOCK: usize = 256 * 1024;
const LOCALHOST: &[u8] = b"localhost";

/// A streaming rewriter: feed it what the client sent, read back what `h2` should see.
#[derive(Debug, Default)]
pub struct AuthorityRewriter {
    state: State,
    /// Original bytes of the header block being collected (all its frames).
    raw: Vec<u8>,
    /// First frame's header, and the block's HPACK fragment so far.
    first: Option<[u8; FRAME_HEADER]>,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    Preface(usize),
    FrameHeader([u8; FRAME_HEADER], usize),
    /// Pass this many payload bytes through.
    Pass(usize),
    /// Collect a HEADERS or CONTINUATION payload of this length.
    Collect([u8; FRAME_HEADER], usize, Vec<u8>),
    /// Not HTTP/2 with prior knowledge, or a block we gave up on: pass everything.
    Off,
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `input`, appending what to hand on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Off => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Start => self.state = State::Preface(0),
                State::Preface(seen) => {
                    let want = &PREFACE[*seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        self.state = State::Off;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *seen += n;
                    if *seen == PREFACE.len() {
                        self.state = State::FrameHeader([0; FRAME_HEADER], 0);
                    }
                }
                State::FrameHeader(h, have) => {
                    let n = (FRAME_HEADER - *have).min(input.len());
                    h[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    if *have == FRAME_HEADER {
                        let h = *h;
                        self.frame_header(h, out);
                    }
                }
                State::Pass(left) => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::FrameHeader([0; FRAME_HEADER], 0);
                    }
                }
                State::Collect(h, len, payload) => {
                    let n = (*len - payload.len()).min(input.len());
                    payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if payload.len() == *len {
                        let (h, payload) = (*h, std::mem::take(payload));
                        self.state = State::FrameHeader([0; FRAME_HEADER], 0);
                        self.header_frame(h, payload, out);
                    }
                }
            }
        }
    }

    /// Whatever is held back, unchanged (at end of input).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.raw);
        match std::mem::replace(&mut self.state, State::Off) {
            State::FrameHeader(h, have) => out.extend_from_slice(&h[..have]),
            State::Collect(h, _, payload) => {
                out.extend_from_slice(&h);
                out.extend_from_slice(&payload);
            }
            _ => {}
        }
    }

    fn frame_header(&mut self, h: [u8; FRAME_HEADER], out: &mut Vec<u8>) {
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let in_block = self.first.is_some();
        if (kind == HEADERS && !in_block) || (kind == CONTINUATION && in_block) {
            if self.raw.len() + FRAME_HEADER + len > MAX_BLOCK {
                self.give_up(out);
                out.extend_from_slice(&h);
                self.state = State::Pass(len);
            } else if len == 0 {
                self.header_frame(h, Vec::new(), out);
            } else {
                self.state = State::Collect(h, len, Vec::with_capacity(len));
            }
            return;
        }
        if in_block {
            // A block interrupted by another frame: a protocol error for h2 to report.
            self.give_up(out);
        }
        out.extend_from_slice(&h);
        self.state = if len == 0 {
            State::FrameHeader([0; FRAME_HEADER], 0)
        } else {
            State::Pass(len)
        };
    }

    /// Emits the collected block unchanged and stops collecting it.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.raw);
        self.first = None;
        self.priority = None;
        self.fragment.clear();
    }

    fn header_frame(&mut self, h: [u8; FRAME_HEADER], payload: Vec<u8>, out: &mut Vec<u8>) {
        self.raw.extend_from_slice(&h);
        self.raw.extend_from_slice(&payload);
        let flags = h[4];
        if self.first.is_none() {
            // HEADERS: [pad length] [priority: 5 bytes] fragment [padding]
            let mut body: &[u8] = &payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some((&p, rest)) = body.split_first() else {
                    return self.give_up(out);
                };
                pad = usize::from(p);
                body = rest;
            }
            if flags & PRIORITY != 0 {
                if body.len() < 5 {
                    return self.give_up(out);
                }
                let mut p = [0; 5];
                p.copy_from_slice(&body[..5]);
                self.priority = Some(p);
                body = &body[5..];
            }
            if pad > body.len() {
                return self.give_up(out);
            }
            self.fragment.extend_from_slice(&body[..body.len() - pad]);
            self.first = Some(h);
        } else {
            self.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS == 0 {
            return;
        }
        let first = self.first.take().unwrap_or(h);
        match rewrite_block(&self.fragment) {
            Some(block) => {
                emit_block(&first, self.priority.take(), &block, out);
                self.raw.clear();
                self.fragment.clear();
            }
            None => self.give_up(out),
        }
    }
}

/// Frames `block` as HEADERS (+ CONTINUATION) for the stream of `first`.
fn emit_block(
    first: &[u8; FRAME_HEADER],
    priority: Option<[u8; 5]>,
    block: &[u8],
    out: &mut Vec<u8>,
) {
    let stream = &first[5..9];
    let mut head = Vec::with_capacity(5 + block.len().min(MAX_FRAME));
    if let Some(p) = priority {
        head.extend_from_slice(&p);
    }
    let room = MAX_FRAME - head.len();
    let (now, mut rest) = block.split_at(block.len().min(room));
    head.extend_from_slice(now);
    let mut flags = first[4] & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    push_frame(out, HEADERS, flags, stream, &head);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = r;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        push_frame(out, CONTINUATION, flags, stream, chunk);
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: &[u8], payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(stream);
    out.extend_from_slice(payload);
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix at `b[*pos]`.
fn int(b: &[u8], pos: &mut usize, n: u8) -> Option<usize> {
    let mask = (1u16 << n) as usize - 1;
    let mut v = usize::from(*b.get(*pos)?) & mask;
    *pos += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v = v.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Skips an RFC 7541 §5.2 string literal; returns its bytes (still Huffman-coded if flagged)
/// and whether it is Huffman-coded.
fn string<'a>(b: &'a [u8], pos: &mut usize) -> Option<(&'a [u8], bool)> {
    let huffman = *b.get(*pos)? & 0x80 != 0;
    let len = int(b, pos, 7)?;
    let s = b.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some((s, huffman))
}

/// The block with every literal `:authority` value replaced by `localhost`; `None` if it does
/// not parse.
pub fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len() + 16);
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let first = b[pos];
        let prefix = if first & 0x80 != 0 {
            int(b, &mut pos, 7)?; // indexed field
            out.extend_from_slice(&b[start..pos]);
            continue;
        } else if first & 0xc0 == 0x40 {
            6 // literal with incremental indexing
        } else if first & 0xe0 == 0x20 {
            int(b, &mut pos, 5)?; // dynamic table size update
            out.extend_from_slice(&b[start..pos]);
            continue;
        } else {
            4 // literal without indexing, or never indexed
        };
        let name_index = int(b, &mut pos, prefix)?;
        let is_authority = if name_index == 0 {
            let (name, huffman) = string(b, &mut pos)?;
            !huffman && name == b":authority"
        } else {
            name_index == 1
        };
        let name_end = pos;
        let (value, huffman) = string(b, &mut pos)?;
        // The shortest the value can be once decoded: a replacement no longer than that keeps
        // the server's table entry no larger than the client's.
        let min_len = if huffman {
            value.len() * 8 / 30
        } else {
            value.len()
        };
        let replacement = &LOCALHOST[..LOCALHOST.len().min(min_len)];
        if is_authority && !replacement.is_empty() {
            out.extend_from_slice(&b[start..name_end]);
            out.push(replacement.len() as u8);
            out.extend_from_slice(replacement);
        } else {
            out.extend_from_slice(&b[start..pos]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, kind, flags, &stream.to_be_bytes(), payload);
        out
    }

    /// `:method POST` (indexed 3), `:authority` literal-with-indexing, name index 1, value raw.
    fn block_with_authority(value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x41, value.len() as u8];
        b.extend_from_slice(value);
        b.push(0x84); // :path /
        b
    }

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = AuthorityRewriter::new();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out);
        }
        r.flush(&mut out);
        out
    }

    #[test]
    fn rewrites_the_authority_of_a_percent_encoded_socket_path() {
        let block = block_with_authority(b"tmp%2Fspire%2Fapi.sock");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        let mut want = PREFACE.to_vec();
        want.extend(frame(0x4, 0, 0, &[]));
        want.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &block_with_authority(b"localhost"),
        ));
        want.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        assert_eq!(run(&[&input]), want);
        // Fed one byte at a time, the same.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), want);
    }

    #[test]
    fn joins_continuations_and_drops_padding_keeping_priority() {
        let block = block_with_authority(b"/var/run/x.sock");
        let (a, b) = block.split_at(4);
        let mut headers = vec![3u8]; // pad length
        headers.extend_from_slice(&[0, 0, 0, 3, 15]); // priority
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let mut payload = vec![0, 0, 0, 3, 15];
        payload.extend(block_with_authority(b"localhost"));
        let mut want = PREFACE.to_vec();
        want.extend(frame(
            HEADERS,
            PRIORITY | END_STREAM | END_HEADERS,
            5,
            &payload,
        ));
        assert_eq!(run(&[&input]), want);
    }

    #[test]
    fn other_fields_and_indexed_authority_are_untouched() {
        // Indexed :authority from the dynamic table (0xbe = 62), a literal header, a size update.
        let mut block = vec![0x20 | 0x1f, 0x01, 0xbe, 0x00, 0x01, b'x', 0x01, b'y'];
        block.extend_from_slice(&[0x10, 0x0a]);
        block.extend_from_slice(b":authority");
        block.extend_from_slice(&[0x03]);
        block.extend_from_slice(b"a/b");
        let got = rewrite_block(&block).unwrap();
        let mut want = block[..8].to_vec();
        want.extend_from_slice(&[0x10, 0x0a]);
        want.extend_from_slice(b":authority");
        want.push(3);
        want.extend_from_slice(b"loc");
        assert_eq!(got, want);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let value = vec![b'v'; 40_000];
        let mut block = vec![0x40, 0x01, b'k', 0x7f];
        let mut len = value.len() - 127;
        while len >= 128 {
            block.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        block.push(len as u8);
        block.extend_from_slice(&value);
        let mut input = PREFACE.to_vec();
        // Sent in frames of at most MAX_FRAME.
        let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
        for (i, c) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            input.extend(frame(kind, flags, 1, c));
        }
        assert_eq!(run(&[&input]), input, "no authority: the same bytes");
    }

    #[test]
    fn garbage_and_http1_pass_unchanged() {
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&[http1]), http1);
        let mut bad = PREFACE.to_vec();
        bad.extend(frame(HEADERS, END_HEADERS, 1, &[0x41, 0x7f]));
        assert_eq!(run(&[&bad]), bad);
        let mut cut = PREFACE.to_vec();
        cut.extend(&frame(HEADERS, END_HEADERS, 1, &block_with_authority(b"x"))[..12]);
        assert_eq!(run(&[&cut]), cut);
    }

    #[test]
    fn grpc_core_block_as_captured() {
        // What grpc-python 1.85 sent for `unix:///tmp/cap.sock`: a new-name literal.
        let mut block = vec![0x40, 0x0a];
        block.extend_from_slice(b":authority");
        block.push(0x0e);
        block.extend_from_slice(b"tmp%2Fcap.sock");
        block.push(0x83);
        let mut want = vec![0x40, 0x0a];
        want.extend_from_slice(b":authority");
        want.push(9);
        want.extend_from_slice(b"localhost");
        want.push(0x83);
        assert_eq!(rewrite_block(&block).unwrap(), want);
    }

    #[test]
    fn replacement_never_outgrows_the_original() {
        // A short value becomes as short a prefix of localhost.
        assert_eq!(
            rewrite_block(&[0x41, 0x03, b'a', b'/', b'b']).unwrap(),
            [0x41, 0x03, b'l', b'o', b'c']
        );
        // An empty value stays (h2 judges it).
        assert_eq!(rewrite_block(&[0x41, 0x00]).unwrap(), [0x41, 0x00]);
        // Huffman-coded: 15 coded bytes decode to at least 4.
        let mut block = vec![0x41, 0x80 | 15];
        block.extend_from_slice(&[0xff; 15]);
        assert_eq!(
            rewrite_block(&block).unwrap(),
            [0x41, 0x04, b'l', b'o', b'c', b'a']
        );
    }

    #[test]
    fn integers_are_bounded() {
        let mut pos = 0;
        assert_eq!(int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Some(1337));
        let mut pos = 0;
        assert_eq!(
            int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 7),
            None
        );
    }
}
