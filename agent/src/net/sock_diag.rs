//! TCP listen sockets and their accept queues from the kernel's sock_diag netlink interface.
//!
//! Reading /proc/<pid>/net/tcp{,6} walks every bucket of the established-connection hash
//! (tens of thousands on a large host, most of them empty) and formats each socket as text,
//! on every snapshot — it was the largest part of an idle agent's CPU. A sock_diag dump
//! filtered to `TCP_LISTEN` visits only the listening hash and answers in binary.
//!
//! Sockets belong to a network namespace, and a netlink socket answers for the namespace it
//! was created in: for a pool in another namespace (a pod), the netlink socket is created on
//! a short-lived thread that has joined that namespace, then kept (one per namespace).
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Mutex, OnceLock},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// A listening TCP socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListen {
    pub inode: u64,
    pub local: SocketAddr,
    /// Connections completed but not yet accept()ed (`sk_ack_backlog`).
    pub accept_queue: u32,
}

/// Network namespaces with a netlink socket kept open; past this many, all are dropped and
/// reopened on demand (pools in that many namespaces on one host are rare).
const MAX_NAMESPACES: usize = 64;
/// Largest netlink answer read at once; a dump arrives in several of these.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// A netlink socket kept for one namespace, with the buffer its answers are read into
/// (allocated once, not on every snapshot).
struct DiagSocket {
    socket: Socket,
    buffer: Vec<u8>,
}

impl DiagSocket {
    fn new(socket: Socket) -> Self {
        Self {
            socket,
            buffer: vec![0u8; RECEIVE_BUFFER],
        }
    }
}

fn sockets() -> &'static Mutex<HashMap<u64, DiagSocket>> {
    static SOCKETS: OnceLock<Mutex<HashMap<u64, DiagSocket>>> = OnceLock::new();
    SOCKETS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The inode of `pid`'s network namespace (`/proc/<pid>/ns/net`).
fn namespace_of(pid: u32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// TCP sockets in LISTEN state in the network namespace of `pid`, IPv4 and IPv6.
pub fn tcp_listeners(pid: u32) -> io::Result<Vec<TcpListen>> {
    let namespace = namespace_of(pid)?;
    let mut cache = sockets().lock().map_err(|_| io::Error::other("poisoned"))?;
    if !cache.contains_key(&namespace) {
        if cache.len() >= MAX_NAMESPACES {
            cache.clear();
        }
        let socket = if namespace_of(std::process::id())? == namespace {
            open()?
        } else {
            open_in_namespace_of(pid)?
        };
        cache.insert(namespace, DiagSocket::new(socket));
    }
    let socket = cache
        .get_mut(&namespace)
        .ok_or_else(|| io::Error::other("netlink socket vanished"))?;
    let mut found = dump(socket, AF_INET)?;
    found.extend(dump(socket, AF_INET6)?);
    Ok(found)
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// A sock_diag socket created inside the network namespace of `pid`: setns(2) changes only
/// the calling thread, so a throwaway thread joins the namespace and opens it.
fn open_in_namespace_of(pid: u32) -> io::Result<Socket> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a valid namespace fd affects only this thread, which ends
                // right after the socket is created.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                open()
            })
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

/// One dump request for listening TCP sockets of `family`, and its answers until Done.
fn dump(diag: &mut DiagSocket, family: u8) -> io::Result<Vec<TcpListen>> {
    let DiagSocket { socket, buffer } = diag;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut found = Vec::new();
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag closed mid-dump",
            ));
        }
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buffer[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    found.push(TcpListen {
                        inode: u64::from(h.inode),
                        local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
                        accept_queue: h.recv_queue,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag: {e:?}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_and_its_accept_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Two connections the kernel completes but nobody accepts.
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let found = tcp_listeners(std::process::id()).expect("sock_diag dump");
        let ours = found
            .iter()
            .find(|l| l.local.port() == port)
            .expect("our listener is in the dump");
        assert_eq!(ours.local.ip().to_string(), "127.0.0.1");
        assert_eq!(ours.accept_queue, 2);
        assert_ne!(ours.inode, 0);
    }
}
