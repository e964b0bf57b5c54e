fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::grpc_request::check(data));
}
