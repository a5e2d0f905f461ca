//! The set-up against an in-process mock backend (the `vhost` crate's backend side): message order,
//! feature intersection, client and server mode, and one error per failing step.

use super::*;
use crate::port::{features, FrontendError, PortConfig, VhostUserPort};
use std::fs::File;
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    Backend, BackendListener, BackendReqHandler, GpuBackend, VhostUserBackendReqHandlerMut,
};

type VResult<T> = vhost::vhost_user::Result<T>;
use vhost::VhostUserMemoryRegionBase;
const NO: vhost::vhost_user::Error = vhost::vhost_user::Error::InvalidOperation("not in the mock");

/// Records every request; offers what it is told to.
struct Mock {
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    reject_mem_table: bool,
    log: Arc<Mutex<Vec<String>>>,
}

impl Mock {
    fn rec(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl VhostUserBackendReqHandlerMut for Mock {
    fn set_owner(&mut self) -> VResult<()> {
        self.rec("set_owner".into());
        Ok(())
    }
    fn reset_owner(&mut self) -> VResult<()> {
        Err(NO)
    }
    fn reset_device(&mut self) -> VResult<()> {
        Err(NO)
    }
    fn get_features(&mut self) -> VResult<u64> {
        self.rec("get_features".into());
        Ok(self.offered)
    }
    fn set_features(&mut self, f: u64) -> VResult<()> {
        self.rec(format!("set_features {f:#x}"));
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _: Option<bool>,
    ) -> VResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.rec(format!("set_mem_table {} {}", ctx.len(), files.len()));
        if self.reject_mem_table {
            return Err(vhost::vhost_user::Error::InvalidParam);
        }
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VResult<()> {
        self.rec(format!("set_vring_num {index} {num}"));
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _: VhostUserVringAddrFlags,
        desc: u64,
        used: u64,
        avail: u64,
        _: u64,
    ) -> VResult<()> {
        assert!(
            desc < avail && avail < used,
            "desc/avail/used in layout order"
        );
        self.rec(format!("set_vring_addr {index}"));
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VResult<()> {
        self.rec(format!("set_vring_base {index} {base}"));
        Ok(())
    }
    fn get_vring_base(&mut self, _: u32) -> VResult<VhostUserVringState> {
        Err(NO)
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VResult<()> {
        self.rec(format!("set_vring_kick {index} {}", fd.is_some()));
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VResult<()> {
        self.rec(format!("set_vring_call {index} {}", fd.is_some()));
        Ok(())
    }
    fn set_vring_err(&mut self, _: u8, _: Option<File>) -> VResult<()> {
        Err(NO)
    }
    fn get_protocol_features(&mut self) -> VResult<VhostUserProtocolFeatures> {
        self.rec("get_protocol_features".into());
        Ok(self.protocol)
    }
    fn set_protocol_features(&mut self, f: u64) -> VResult<()> {
        self.rec(format!("set_protocol_features {f:#x}"));
        Ok(())
    }
    fn get_queue_num(&mut self) -> VResult<u64> {
        self.rec("get_queue_num".into());
        Ok(2)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VResult<()> {
        self.rec(format!("set_vring_enable {index} {enable}"));
        Ok(())
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VResult<Vec<u8>> {
        Err(NO)
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VResult<()> {
        Err(NO)
    }
    fn set_backend_req_fd(&mut self, _: Backend) {}
    fn set_gpu_socket(&mut self, _: GpuBackend) -> VResult<()> {
        Err(NO)
    }
    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VResult<File> {
        Err(NO)
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VResult<(VhostUserInflight, File)> {
        Err(NO)
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VResult<()> {
        Err(NO)
    }
    fn get_max_mem_slots(&mut self) -> VResult<u64> {
        Err(NO)
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VResult<Option<VhostUserMemoryRegionBase>> {
        Err(NO)
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VResult<()> {
        Err(NO)
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VResult<Option<File>> {
        Err(NO)
    }
    fn check_device_state(&mut self) -> VResult<()> {
        Err(NO)
    }
    fn get_shmem_config(&mut self) -> VResult<VhostUserShMemConfig> {
        Err(NO)
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VResult<()> {
        Err(NO)
    }
}

const OFFERED: u64 = features::VIRTIO_F_VERSION_1
    | features::VIRTIO_NET_F_MRG_RXBUF
    | features::VIRTIO_RING_F_INDIRECT_DESC
    | VHOST_USER_F_PROTOCOL_FEATURES;

fn mock(
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    reject: bool,
) -> (Mock, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (
        Mock {
            offered,
            protocol,
            reject_mem_table: reject,
            log: log.clone(),
        },
        log,
    )
}

fn sock(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bench-setup-{tag}-{}.sock", std::process::id()))
}

/// Serves one connection on `handler` until the frontend goes away.
fn serve(mut h: BackendReqHandler<Mutex<Mock>>) {
    while h.handle_request().is_ok() {}
}

/// Mock listens (the switch's server mode); returns the serving thread.
fn listen_mock(path: &Path, m: Mock) -> std::thread::JoinHandle<()> {
    let mut listener = Listener::new(path, true).unwrap();
    std::thread::spawn(move || {
        let mut bl = BackendListener::new(&mut listener, Arc::new(Mutex::new(m))).unwrap();
        let h = loop {
            if let Some(h) = bl.accept().unwrap() {
                break h;
            }
        };
        serve(h);
    })
}

fn port_config(path: &Path) -> PortConfig {
    PortConfig {
        huge: hugepages::HugePolicy::Never,
        queue_size: 64,
        name: "setup-test".into(),
        connect_timeout: Duration::from_secs(5),
        ..PortConfig::new(path)
    }
}

#[test]
fn full_setup_runs_in_order_and_intersects_features() {
    let path = sock("order");
    let protocol = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::STATUS;
    let (m, log) = mock(OFFERED, protocol, false);
    let server = listen_mock(&path, m);
    let port = VhostUserPort::connect(&port_config(&path)).expect("connect");
    let want = features::DEFAULT & OFFERED;
    assert_eq!(port.features(), want);
    assert_eq!(
        port.negotiated().protocol_features,
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG,
        "STATUS is offered but not asked for"
    );
    assert_eq!(port.header_len(), 12);
    drop(port);
    server.join().unwrap();
    let log = log.lock().unwrap().clone();
    let mut expected = vec![
        "set_owner".to_string(),
        "get_features".into(),
        format!("set_features {want:#x}"),
        "get_protocol_features".into(),
        format!(
            "set_protocol_features {:#x}",
            (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG)
                .bits()
        ),
        "get_queue_num".into(),
        "set_mem_table 1 1".into(),
    ];
    for q in 0..2 {
        expected.extend([
            format!("set_vring_num {q} 64"),
            format!("set_vring_addr {q}"),
            format!("set_vring_base {q} 0"),
            format!("set_vring_call {q} true"),
            format!("set_vring_kick {q} true"),
        ]);
    }
    expected.extend([
        "set_vring_enable 0 true".to_string(),
        "set_vring_enable 1 true".into(),
    ]);
    assert_eq!(log, expected);
}

#[test]
fn without_protocol_features_no_protocol_messages_are_sent() {
    let path = sock("legacy");
    let (m, log) = mock(
        features::VIRTIO_RING_F_EVENT_IDX,
        VhostUserProtocolFeatures::empty(),
        false,
    );
    let server = listen_mock(&path, m);
    let port = VhostUserPort::connect(&port_config(&path)).expect("connect");
    assert_eq!(port.features(), features::VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(port.header_len(), 10);
    drop(port);
    server.join().unwrap();
    let log = log.lock().unwrap();
    assert!(
        !log.iter()
            .any(|l| l.contains("protocol") || l.contains("enable")),
        "{log:?}"
    );
}

#[test]
fn rejected_memory_table_is_reported_at_its_step_with_reply_ack() {
    let path = sock("memtable");
    let (m, _log) = mock(OFFERED, VhostUserProtocolFeatures::REPLY_ACK, true);
    let server = listen_mock(&path, m);
    let err = match VhostUserPort::connect(&port_config(&path)) {
        Err(FrontendError::Setup(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a rejected memory table must fail the set-up"),
    };
    assert!(
        matches!(err, SetupError::SetMemTable { regions: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the backend rejected the memory table with 1 region(s)"
    );
    server.join().unwrap();
}

#[test]
fn missing_required_features_are_named() {
    let path = sock("required");
    let (m, _log) = mock(
        VHOST_USER_F_PROTOCOL_FEATURES,
        VhostUserProtocolFeatures::empty(),
        false,
    );
    let server = listen_mock(&path, m);
    let mut fe = connect(&path, false, Duration::from_secs(5), 2).unwrap();
    let mut cfg = VhostUserSetup::new(features::DEFAULT, vec![], vec![]);
    cfg.required_features = features::VIRTIO_F_VERSION_1;
    let err = setup_vhost_user(&mut fe, &cfg).unwrap_err();
    assert!(
        matches!(err, SetupError::FeaturesRefused { missing, .. } if missing == features::VIRTIO_F_VERSION_1),
        "{err:?}"
    );
    drop(fe);
    server.join().unwrap();
}

#[test]
fn server_mode_waits_for_the_backend_to_connect() {
    let path = sock("server");
    let (m, log) = mock(OFFERED, VhostUserProtocolFeatures::MQ, false);
    let p = path.clone();
    let backend = std::thread::spawn(move || {
        // The switch's client-mode port: retry until our listener exists.
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&p) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        serve(BackendReqHandler::from_stream(
            stream,
            Arc::new(Mutex::new(m)),
        ));
    });
    let cfg = PortConfig {
        listen: true,
        ..port_config(&path)
    };
    let port = VhostUserPort::connect(&cfg).expect("accept and set up");
    assert_eq!(port.features(), features::DEFAULT & OFFERED);
    drop(port);
    backend.join().unwrap();
    assert!(log
        .lock()
        .unwrap()
        .contains(&"set_vring_enable 1 true".to_string()));
}

#[test]
fn absent_socket_and_absent_backend_time_out_with_clear_errors() {
    let path = sock("absent");
    let _ = std::fs::remove_file(&path);
    let err = connect(&path, false, Duration::from_millis(50), 2)
        .err()
        .unwrap();
    assert!(matches!(err, SetupError::SocketMissing(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"));
    let err = connect(&path, true, Duration::from_millis(50), 2)
        .err()
        .unwrap();
    assert!(matches!(err, SetupError::AcceptTimeout(_)), "{err:?}");
}
