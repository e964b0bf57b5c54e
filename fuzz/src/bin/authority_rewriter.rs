fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::authority_rewriter::check(data));
}
