//! What Switchyard's binaries (`vswitch`, `vmm`, `pktgen`) share at their edges: the tracing
//! set-up, one format for an error and its causes, and binding a unix-socket listener without
//! stealing a live socket or deleting a file that is not a socket.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Logs to stderr, filtered by `RUST_LOG` or, when that is unset or invalid, by `default_filter`
/// (an `EnvFilter` directive such as `"info"` or `"warn"`).
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// An error and its causes as one line: `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why a unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something still accepts connections on the socket.
    #[error("socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("{path} exists and is {kind}, not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf, kind: &'static str },
    /// bind() or making the listener non-blocking failed.
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a non-blocking listener at `path`, creating its directory. A socket that something
/// still answers on is refused; a stale one (left by a process that died) is replaced; any other
/// file at the path is refused rather than deleted.
pub fn bind_unix_listener(path: &Path) -> Result<UnixListener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        Ok(meta) => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
                kind: file_kind(&meta.file_type()),
            })
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listen_err = |source| BindError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "a device node"
    } else {
        "not a socket"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_every_cause_on_one_line() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(error_chain(&e), "outer: root cause");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn bind_refuses_a_non_socket_and_replaces_only_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("switchyard-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let file = dir.join("precious.img");
        std::fs::write(&file, b"data").unwrap();
        let e = bind_unix_listener(&file).unwrap_err();
        assert!(matches!(e, BindError::NotASocket { .. }), "{e:?}");
        assert!(
            e.to_string().contains("is a regular file, not a socket"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"data",
            "the file was touched"
        );

        let sub = dir.join("subdir");
        std::fs::create_dir(&sub).unwrap();
        assert!(
            matches!(bind_unix_listener(&sub), Err(BindError::NotASocket { kind, .. }) if kind == "a directory")
        );
        assert!(sub.is_dir());

        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(
            matches!(bind_unix_listener(&link), Err(BindError::NotASocket { kind, .. }) if kind == "a symbolic link")
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"data");

        // A live socket is in use; a stale one (nobody accepts) is replaced.
        let sock = dir.join("port.sock");
        let live = bind_unix_listener(&sock).unwrap();
        assert!(matches!(
            bind_unix_listener(&sock),
            Err(BindError::InUse(_))
        ));
        drop(live);
        let again = bind_unix_listener(&sock).unwrap();
        assert!(UnixStream::connect(&sock).is_ok());
        drop(again);

        // The directory is created when missing.
        let nested = dir.join("a/b/c.sock");
        drop(bind_unix_listener(&nested).unwrap());
        assert!(nested.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
