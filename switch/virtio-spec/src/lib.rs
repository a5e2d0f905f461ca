//! The virtio vocabulary shared by Switchyard's four ring ends: the switch (device side,
//! `switch/src/vring.rs`), our frontend (driver side, `bench/vhost-frontend`), the VMM's virtio-net
//! device and its built-in guest's driver.
//!
//! Everything lives in `spec.rs`, which depends on nothing (not even this crate's `lib.rs`): the
//! guest, a freestanding build without Cargo, includes that file with `#[path]`. Names are those
//! of `virtio-bindings` (the Linux uapi headers); the unit tests check each value against it.

#![no_std]

mod spec;

pub use spec::{features, net, ring, status};

#[cfg(test)]
mod tests;
