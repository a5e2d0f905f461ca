//! Host tests of the built-in guest's packet and command-line logic (`vmm/guest/src/net.rs`,
//! which also compiles into the freestanding guest; its tests are in `net_tests.rs`).

#[allow(dead_code)]
#[path = "../guest/src/net.rs"]
mod net;
