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
//! Why not a maintained HPACK crate: a decoder would have to mirror the client's dynamic table
//! and a re-encoder would renumber it, so the bytes `h2` sees would no longer be the client's.
//! All this needs is the field *boundaries* (RFC 7541 §5-6), never a decoded value, so the
//! walk below reads integers and string lengths only and copies everything else verbatim.
//!
//! This code reads bytes from any local user before we know who they are, so it is bounded:
//! - every step of [`AuthorityRewriter::feed`] consumes input or finishes a frame, so it
//!   cannot loop (a zero-length HEADERS frame once made it spin forever);
//! - it holds at most one header block of [`MAX_BLOCK`] bytes per connection, in one copy;
//!   a larger block passes unchanged for `h2` to judge against its own header-list limit;
//! - what it hands on is never more than what it was given plus the block it held back.
//!
//! Only header blocks are touched; every other frame passes through byte for byte. A block that
//! does not parse passes unchanged. `fuzz/` runs it under a coverage-guided fuzzer.

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const END_STREAM: u8 = 0x1;
/// The frame size every HTTP/2 peer must accept (tonic does not raise it).
const MAX_FRAME: usize = 16_384;
/// Largest header block held back to rewrite, frame headers included; a larger one passes
/// unchanged. gRPC request headers are a few hundred bytes; this equals the header-list limit
/// the server advertises ([`super::limits::MAX_HEADER_LIST_BYTES`]), so nothing a conforming
/// client sends is left out.
pub const MAX_BLOCK: usize = 16 * 1024;
const LOCALHOST: &[u8] = b"localhost";

/// A streaming rewriter: feed it what the client sent, read back what `h2` should see.
#[derive(Debug, Default)]
pub struct AuthorityRewriter {
    state: State,
    /// The header block being collected, as the client framed it (frame headers and
    /// payloads): emitted unchanged if we give up on it. Never over [`MAX_BLOCK`].
    raw: Vec<u8>,
    /// Where the last frame of `raw` starts.
    last_frame: usize,
}

#[derive(Debug)]
enum State {
    Preface(usize),
    FrameHeader([u8; FRAME_HEADER], usize),
    /// Pass this many payload bytes through.
    Pass(usize),
    /// Append this many more payload bytes of a HEADERS or CONTINUATION frame to `raw`.
    Collect(usize),
    /// Not HTTP/2 with prior knowledge, or the stream ended: pass everything.
    Off,
}

impl Default for State {
    fn default() -> Self {
        State::Preface(0)
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the whole client preface has been seen (or the stream is not HTTP/2 with
    /// prior knowledge, which `h2` refuses at once).
    pub fn past_preface(&self) -> bool {
        !matches!(self.state, State::Preface(_))
    }

    /// Bytes held back (part of a header block or a frame header).
    pub fn held(&self) -> usize {
        let header = match self.state {
            State::FrameHeader(_, have) => have,
            _ => 0,
        };
        self.raw.len() + header
    }

    /// Consumes all of `input`, appending what to hand on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        // Every arm consumes at least one byte or returns, so this ends after at most
        // `input.len()` rounds.
        while !input.is_empty() {
            match &mut self.state {
                State::Off => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(seen) => {
                    let want = &PREFACE[*seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        self.state = State::Off;
                        out.extend_from_slice(input);
                        return;
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
                        self.state = State::FrameHeader([0; FRAME_HEADER], 0);
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
                State::Collect(left) => {
                    let n = (*left).min(input.len());
                    self.raw.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::FrameHeader([0; FRAME_HEADER], 0);
                        self.frame_collected(out);
                    }
                }
            }
        }
    }

    /// Whatever is held back, unchanged (at end of input).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.raw);
        if let State::FrameHeader(h, have) = std::mem::replace(&mut self.state, State::Off) {
            out.extend_from_slice(&h[..have]);
        }
    }

    /// A whole frame header has arrived; the state is already "next frame header".
    fn frame_header(&mut self, h: [u8; FRAME_HEADER], out: &mut Vec<u8>) {
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let in_block = !self.raw.is_empty();
        let part_of_block = (kind == HEADERS && !in_block) || (kind == CONTINUATION && in_block);
        if part_of_block && self.raw.len() + FRAME_HEADER + len <= MAX_BLOCK {
            self.last_frame = self.raw.len();
            self.raw.extend_from_slice(&h);
            if len == 0 {
                self.frame_collected(out);
            } else {
                self.state = State::Collect(len);
            }
            return;
        }
        // Too large to hold, or a block interrupted by another frame (a protocol error for
        // h2 to report): what was held goes on unchanged, and so does this frame.
        self.give_up(out);
        out.extend_from_slice(&h);
        if len > 0 {
            self.state = State::Pass(len);
        }
    }

    /// Emits the held block unchanged and stops collecting it.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.raw);
        self.last_frame = 0;
    }

    /// The last frame of `raw` is complete: rewrite the block if it ended.
    fn frame_collected(&mut self, out: &mut Vec<u8>) {
        let flags = self.raw[self.last_frame + 4];
        if flags & END_HEADERS == 0 {
            return;
        }
        match split_block(&self.raw).and_then(|(priority, fragment)| {
            rewrite_block(&fragment).map(|block| (priority, block))
        }) {
            Some((priority, block)) => {
                let mut first = [0; FRAME_HEADER];
                first.copy_from_slice(&self.raw[..FRAME_HEADER]);
                emit_block(&first, priority, &block, out);
                self.raw.clear();
                self.last_frame = 0;
            }
            None => self.give_up(out),
        }
    }
}

/// The priority field and the HPACK fragment of a header block framed as HEADERS followed by
/// CONTINUATIONs; `None` when the padding or priority do not fit.
fn split_block(raw: &[u8]) -> Option<(Option<[u8; 5]>, Vec<u8>)> {
    let mut fragment = Vec::with_capacity(raw.len());
    let mut priority = None;
    let mut at = 0;
    while at < raw.len() {
        let h = raw.get(at..at + FRAME_HEADER)?;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let flags = h[4];
        let payload = raw.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
        if at == 0 {
            // HEADERS: [pad length] [priority: 5 bytes] fragment [padding]
            let mut body = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&p, rest) = body.split_first()?;
                pad = usize::from(p);
                body = rest;
            }
            if flags & PRIORITY != 0 {
                let p: [u8; 5] = body.get(..5)?.try_into().ok()?;
                priority = Some(p);
                body = &body[5..];
            }
            fragment.extend_from_slice(body.get(..body.len().checked_sub(pad)?)?);
        } else {
            fragment.extend_from_slice(payload);
        }
        at += FRAME_HEADER + len;
    }
    Some((priority, fragment))
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

    /// The 43 bytes that once made `feed` loop forever: a HEADERS frame of length 0 with
    /// END_HEADERS, then one more byte.
    fn zero_length_headers_then_a_byte() -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(HEADERS, END_HEADERS, 1, &[]));
        input.push(0);
        assert_eq!(input.len(), 43);
        input
    }

    #[test]
    fn a_zero_length_header_frame_makes_progress() {
        let input = zero_length_headers_then_a_byte();
        // An empty block rewrites to an empty block: the same bytes come out.
        assert_eq!(run(&[&input]), input);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), input);
        // Zero-length CONTINUATIONs too.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x84]));
        input.extend(frame(CONTINUATION, 0, 1, &[]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
        input.extend(frame(0x4, 0, 0, &[]));
        // The block is re-framed as one HEADERS frame.
        let mut want = PREFACE.to_vec();
        want.extend(frame(HEADERS, END_HEADERS, 1, &[0x84]));
        want.extend(frame(0x4, 0, 0, &[]));
        assert_eq!(run(&[&input]), want);
    }

    #[test]
    fn holds_at_most_one_bounded_block() {
        let mut r = AuthorityRewriter::new();
        let mut out = Vec::new();
        r.feed(PREFACE, &mut out);
        // An unfinished block that keeps growing in CONTINUATIONs of MAX_FRAME.
        r.feed(&frame(HEADERS, 0, 1, &[0x84; 100]), &mut out);
        let chunk = frame(CONTINUATION, 0, 1, &vec![0x84; MAX_FRAME]);
        for _ in 0..64 {
            r.feed(&chunk, &mut out);
            assert!(r.held() <= MAX_BLOCK, "held {}", r.held());
        }
        // Everything beyond the bound went on to h2 unchanged, in order.
        let mut all = Vec::new();
        r.flush(&mut out);
        all.extend_from_slice(PREFACE);
        all.extend(frame(HEADERS, 0, 1, &[0x84; 100]));
        for _ in 0..64 {
            all.extend_from_slice(&chunk);
        }
        assert_eq!(out, all);
    }

    #[test]
    fn a_block_at_the_bound_is_rewritten_and_one_past_it_passes() {
        // HEADERS + CONTINUATION whose frames total exactly MAX_BLOCK bytes.
        let authority = block_with_authority(b"tmp%2Fx.sock");
        let second = MAX_BLOCK - 2 * FRAME_HEADER - authority.len();
        let filler = vec![0x84; second];
        let build = |filler: &[u8]| {
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, 0, 1, &authority));
            input.extend(frame(CONTINUATION, END_HEADERS, 1, filler));
            input
        };
        let at = build(&filler);
        assert_ne!(run(&[&at]), at, "a block of MAX_BLOCK bytes is rewritten");
        let mut longer = filler.clone();
        longer.push(0x84);
        let past = build(&longer);
        assert_eq!(run(&[&past]), past, "one byte more passes unchanged");
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
