//! Fuzz target: see `ptth_proto::invariants` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ptth_proto::invariants::setup_bounds(data);
});
