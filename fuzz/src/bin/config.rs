fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::config::check(data));
}
