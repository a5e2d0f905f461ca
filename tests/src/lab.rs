//! An in-process switch with our own frontend driver on its ports, and frame helpers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switch::bridge::{PortStatsRow, SwitchConfig, SwitchCore};
use switch::port_spec::PortSpec;
use switch::vhost_port::Mode;
use vhost_frontend::{PortConfig, VhostUserPort};

use crate::Scratch;

pub const BCAST: [u8; 6] = [0xff; 6];

pub fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, n]
}

/// An Ethernet frame of `len` bytes whose payload encodes `seq` and a pattern.
pub fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32).wrapping_mul(31).wrapping_add(seq) as u8);
    }
    f
}

pub struct Lab {
    pub core: Arc<SwitchCore>,
    pub scratch: Scratch,
}

impl Lab {
    pub fn new(tag: &str, ports: &[&str]) -> Self {
        Self::with_config(tag, ports, |_| {})
    }

    /// A lab whose switch settings `tweak` adjusts first.
    pub fn with_config(tag: &str, ports: &[&str], tweak: impl FnOnce(&mut SwitchConfig)) -> Self {
        let scratch = Scratch::new(tag);
        let pmd = *switch::pmd::available_cores().last().unwrap();
        let mut cfg = SwitchConfig {
            pmd_cores: vec![pmd],
            mac_aging_secs: 300,
            // Tests share two cores with each other: let idle PMDs sleep a little.
            pmd_max_sleep_us: 200,
            ..Default::default()
        };
        tweak(&mut cfg);
        let core = SwitchCore::new(&cfg).unwrap();
        let lab = Lab { core, scratch };
        for p in ports {
            lab.add(p);
        }
        lab
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.scratch.path(&format!("{name}.sock"))
    }

    pub fn add(&self, name: &str) {
        self.core
            .add_port(
                name,
                PortSpec::VhostUser {
                    socket: self.sock(name),
                    mode: Mode::Server,
                },
            )
            .unwrap();
    }

    pub fn attach(&self, name: &str) -> VhostUserPort {
        self.attach_with(name, |_| {})
    }

    pub fn attach_with(&self, name: &str, tweak: impl FnOnce(&mut PortConfig)) -> VhostUserPort {
        let mut cfg = PortConfig::new(self.sock(name));
        cfg.name = format!("test-{name}");
        cfg.huge = hugepages::HugePolicy::Never;
        tweak(&mut cfg);
        let port = VhostUserPort::connect(&cfg).unwrap();
        // The switch activates rings asynchronously to the frontend's last message.
        assert!(
            crate::wait_until(Duration::from_secs(5), || self
                .core
                .ports()
                .iter()
                .any(|p| p.name == name && p.state == "up")),
            "port {name} did not come up: {:?}",
            self.core.ports()
        );
        port
    }

    pub fn stats(&self, name: &str) -> PortStatsRow {
        self.core.stats(Some(name)).unwrap().remove(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.core.del_all_ports();
    }
}

/// Collects frames from `port` until `want` arrived or `timeout` passed.
pub fn collect(port: &mut VhostUserPort, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < want && start.elapsed() < timeout {
        if port.recv(|f| got.push(f.to_vec())) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// Sends all frames (retrying while the tx ring is full).
pub fn send_all(port: &mut VhostUserPort, frames: &[Vec<u8>]) {
    let mut i = 0;
    let start = Instant::now();
    while i < frames.len() {
        let refs: Vec<&[u8]> = frames[i..].iter().take(32).map(|f| f.as_slice()).collect();
        i += port.send(&refs);
        assert!(start.elapsed() < Duration::from_secs(10), "tx ring stuck");
        if i < frames.len() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Nothing more arrives within a short quiet period.
pub fn quiet(port: &mut VhostUserPort) -> usize {
    collect(port, usize::MAX, Duration::from_millis(300)).len()
}
