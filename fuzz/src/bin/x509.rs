fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::x509::check(data));
}
