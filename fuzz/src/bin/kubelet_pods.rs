fn main() {
    afl::fuzz!(|data: &[u8]| svid_broker::fuzzing::kubelet_pods::check(data));
}
