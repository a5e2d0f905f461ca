//! Built-in guest images (vmm/guest/CONTRACT.md). `vmm/build.rs` builds the guest into
//! `$OUT_DIR/guest.elf` and sets `cfg(switchyard_guest)`; without it there are no built-in guests.

/// Names accepted by `--guest`.
pub const NAMES: &[&str] = &["net"];

#[cfg(switchyard_guest)]
static NET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));

/// The ELF image of built-in guest `name` ("net", alias "default"), if this build has it.
#[allow(unexpected_cfgs)]
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    match name {
        "net" | "default" => {
            #[cfg(switchyard_guest)]
            {
                Some(NET)
            }
            #[cfg(not(switchyard_guest))]
            {
                None
            }
        }
        _ => None,
    }
}
