//! Where work runs: CPU pinning of worker threads and one SO_REUSEPORT listening socket per
//! worker and listen address, so the kernel spreads new connections across workers and an
//! accepted connection stays on its worker for life.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Pins the calling thread to core `worker % cores`. Returns the core chosen, or None when the
/// core list is unavailable or pinning failed (the worker then runs unpinned).
pub fn pin_current_thread(worker: usize) -> Option<usize> {
    let cores = core_affinity::get_core_ids()?;
    if cores.is_empty() {
        return None;
    }
    let core = cores[worker % cores.len()];
    core_affinity::set_for_current(core).then_some(core.id)
}

/// Fills a `sockaddr_storage` for `addr`, returning it and the length to pass to the kernel.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The address a kernel-filled `sockaddr_storage` holds (IPv4 or IPv6), if it holds one.
pub fn socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is large enough.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn check(ret: libc::c_int, what: &str, addr: &SocketAddr) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{what} for listener {addr}: {e}"),
        ));
    }
    Ok(ret)
}

fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    what: &str,
    addr: &SocketAddr,
) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is a socket we own; optval points to a live c_int of the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(r, what, addr).map(drop)
}

/// A TCP socket with SO_REUSEADDR (and SO_REUSEPORT when asked) bound to `addr`. The bind error
/// says what to do when another process holds the address.
fn bound_socket(addr: &SocketAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = check(
        unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
        addr,
    )?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        "SO_REUSEADDR",
        addr,
    )?;
    if reuseport {
        set_int_opt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            "SO_REUSEPORT",
            addr,
        )?;
    }
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a valid sockaddr of `len` bytes for this address family.
    if unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) } < 0 {
        let e = io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::EADDRINUSE) {
            " (another process, perhaps another ringproxy, is listening there)"
        } else {
            ""
        };
        return Err(io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e}{hint}"),
        ));
    }
    Ok(owned)
}

/// A listening TCP socket with SO_REUSEADDR, SO_REUSEPORT and TCP_NODELAY (inherited by the
/// connections it accepts), bound to `addr`.
pub fn reuseport_listener(addr: &SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let owned = bound_socket(addr, true)?;
    let fd = owned.as_raw_fd();
    set_int_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        "TCP_NODELAY",
        addr,
    )?;
    // SAFETY: fd is a bound stream socket.
    check(unsafe { libc::listen(fd, backlog) }, "listen", addr)?;
    Ok(owned)
}

/// Checks that nobody else holds `addr` and resolves port 0 to a concrete port, before the
/// workers bind their SO_REUSEPORT listeners. Without this, a second proxy started on the same
/// port would silently share it (SO_REUSEPORT lets any socket of the same user join the group)
/// and steal part of the connections; and port 0 would give every worker a different port.
pub fn claim_listen_addr(addr: &SocketAddr) -> io::Result<SocketAddr> {
    // SO_REUSEADDR only (no SO_REUSEPORT): the bind fails if any other socket is bound there,
    // while sockets in TIME_WAIT do not block it.
    let owned = bound_socket(addr, false)?;
    let fd = owned.as_raw_fd();
    // SAFETY: sockaddr_storage is plain old data; getsockname writes at most `len` bytes.
    let mut bound: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut blen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: fd is a bound socket and bound/blen describe a writable buffer.
    check(
        unsafe { libc::getsockname(fd, &mut bound as *mut _ as *mut libc::sockaddr, &mut blen) },
        "getsockname",
        addr,
    )?;
    let port = match addr {
        // SAFETY: the kernel filled a sockaddr_in for an AF_INET socket.
        SocketAddr::V4(_) => {
            u16::from_be(unsafe { (*(&bound as *const _ as *const libc::sockaddr_in)).sin_port })
        }
        // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
        SocketAddr::V6(_) => {
            u16::from_be(unsafe { (*(&bound as *const _ as *const libc::sockaddr_in6)).sin6_port })
        }
    };
    let mut resolved = *addr;
    resolved.set_port(port);
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips() {
        for text in ["127.0.0.2:3306", "[::1]:6033"] {
            let a: SocketAddr = text.parse().unwrap();
            let (ss, len) = sockaddr(&a);
            assert_eq!(socket_addr(&ss, len), Some(a));
        }
        // SAFETY: all-zero sockaddr_storage is valid (family AF_UNSPEC).
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(socket_addr(&zero, 128), None);
    }

    #[test]
    fn a_port_held_by_another_socket_is_refused_and_port_zero_is_resolved() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let resolved = claim_listen_addr(&any).unwrap();
        assert_ne!(resolved.port(), 0);
        // A listener of "another process" (reuseport, like a second ringproxy) holds the port.
        let _other = reuseport_listener(&resolved, 16).unwrap();
        let err = claim_listen_addr(&resolved).unwrap_err();
        assert_eq!(err.raw_os_error(), None);
        assert!(err.to_string().contains("Address already in use"), "{err}");
        assert!(err.to_string().contains("another process"), "{err}");
    }
}
