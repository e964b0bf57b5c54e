fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::jwt::check(data));
}
