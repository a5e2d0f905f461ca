//! The data path: what PMDs see (immutable snapshots of ports and rx queues, swapped between
//! bursts) and the forwarding of one burst from a source to its destinations.
//!
//! Arrows point one way: this module uses the leaves (rings, scatter-gather lists, offloads,
//! TAP frame I/O, counters, the MAC table) and is used by the PMD threads and the control path;
//! none of the leaves, and nothing here, reaches into the control path.
//!
//! - [`snapshot`]: the values a PMD polls and delivers to ([`PmdSnapshot`]).
//! - [`queue`]: a guest's ring shared by PMDs ([`QueueRt`]).
//! - [`workspace`]: a PMD's preallocated frames and scratch ([`Workspace`]).
//! - [`enqueue`]: one frame into one destination ring ([`RxTarget`]).
//! - [`forward`]: one burst from source to destinations ([`Forwarder`]), with the offload
//!   fallback and TAP ports in their own files.

mod copies;
pub mod enqueue;
mod fallback;
pub mod forward;
pub mod queue;
pub mod snapshot;
mod tap_port;
pub mod workspace;

pub use crate::limits::{Limits, BURST, DEFAULT_MAX_FRAME, MAX_GSO_FRAME, MAX_PORTS};
pub use copies::copy_frame;
pub use enqueue::{EnqueueError, FrameRef, RxChains, RxFormat, RxTarget};
pub use forward::Forwarder;
pub use queue::QueueRt;
pub use snapshot::{PmdSnapshot, PortOut, PortRt, PortSecurity, RxSource, RxqRt};
pub use workspace::{Pkt, TxBufs, Workspace};
