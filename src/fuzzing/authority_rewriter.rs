//! `:authority` rewriting of the request stream ([`crate::server::authority`]).
//!
//! Input: one byte `k` (cuts, mod 16), `k` bytes of gaps between cuts, then the stream. The
//! stream is fed whole, and again in the chunks the cuts make (empty chunks included).

use crate::server::authority::{rewrite_block, AuthorityRewriter};

/// HTTP/2 frame header and default maximum frame size: a block that arrived in one oversized
/// frame is re-framed into frames of at most this size, each with a new header.
const FRAME_HEADER: usize = 9;
const MAX_FRAME: usize = 16_384;

pub fn check(data: &[u8]) {
    let (cuts, stream) = split_header(data);

    let whole = run(&[stream]);
    let chunks = chunks(stream, &cuts);
    assert_eq!(
        run(&chunks),
        whole,
        "fed in {} chunks, the output differs from feeding it whole",
        chunks.len()
    );
    // Only header blocks change, never grow (a value is cut, padding dropped), and re-framing
    // adds at most one frame header per MAX_FRAME bytes.
    let bound = stream.len() + FRAME_HEADER * (stream.len() / MAX_FRAME);
    assert!(
        whole.len() <= bound,
        "output {} bytes for input {} (bound {bound})",
        whole.len(),
        stream.len()
    );
    // What it wrote is already rewritten: a second pass changes nothing.
    assert_eq!(run(&[&whole]), whole, "rewriting the output changed it");

    // The HPACK block rewriter alone, on the raw bytes.
    if let Some(block) = rewrite_block(stream) {
        assert!(block.len() <= stream.len(), "rewritten block grew");
        assert_eq!(
            rewrite_block(&block).as_deref(),
            Some(block.as_slice()),
            "rewriting a rewritten block changed it"
        );
    }
}

fn split_header(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let k = usize::from(k % 16).min(rest.len());
    let (gaps, stream) = rest.split_at(k);
    let mut at = 0;
    let cuts = gaps
        .iter()
        .map(|&g| {
            at += usize::from(g);
            at.min(stream.len())
        })
        .collect();
    (cuts, stream)
}

fn chunks<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &cut in cuts {
        out.push(&stream[from..cut]);
        from = cut;
    }
    out.push(&stream[from..]);
    out
}

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let mut rewriter = AuthorityRewriter::new();
    let mut out = Vec::new();
    for chunk in chunks {
        rewriter.feed(chunk, &mut out);
    }
    rewriter.flush(&mut out);
    out
}
