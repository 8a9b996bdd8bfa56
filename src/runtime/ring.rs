//! Ring construction and kernel feature probing. Every worker's ring is built here with
//! SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN (kernel 6.1+), and [`probe`] checks once at start
//! that the kernel has every io_uring operation and feature the runtime uses, naming the first
//! one missing and the kernel version that brought it.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// An io_uring operation or feature the runtime needs, with the kernel that introduced it.
struct Need {
    what: &'static str,
    since: &'static str,
    opcode: u8,
}

const NEEDS: &[Need] = &[
    Need {
        what: "IORING_OP_ACCEPT (multishot accept into direct descriptors)",
        since: "5.19",
        opcode: opcode::AcceptMulti::CODE,
    },
    Need {
        what: "IORING_OP_RECV (multishot recv with provided-buffer rings)",
        since: "6.0",
        opcode: opcode::RecvMulti::CODE,
    },
    Need {
        what: "IORING_OP_SENDMSG",
        since: "5.3",
        opcode: opcode::SendMsg::CODE,
    },
    Need {
        what: "IORING_OP_SOCKET (sockets created as direct descriptors)",
        since: "5.19",
        opcode: opcode::Socket::CODE,
    },
    Need {
        what: "IORING_OP_CONNECT",
        since: "5.5",
        opcode: opcode::Connect::CODE,
    },
    Need {
        what: "IORING_OP_LINK_TIMEOUT",
        since: "5.5",
        opcode: opcode::LinkTimeout::CODE,
    },
    Need {
        what: "IORING_OP_CLOSE (closing direct descriptors)",
        since: "5.15",
        opcode: opcode::Close::CODE,
    },
    Need {
        what: "IORING_OP_SHUTDOWN (closing sockets without cancel walks)",
        since: "5.11",
        opcode: opcode::Shutdown::CODE,
    },
    Need {
        what: "IORING_OP_ASYNC_CANCEL",
        since: "5.5",
        opcode: opcode::AsyncCancel::CODE,
    },
    // The opcode exists since 5.19; its SOCKET_URING_OP_SETSOCKOPT sub-command (TCP_NODELAY on
    // backend sockets) since 6.7. The sub-command cannot be probed: on 5.19-6.6 the first
    // attempt fails, the worker warns once, and backend sockets keep Nagle's algorithm.
    Need {
        what: "IORING_OP_URING_CMD (socket options through the ring)",
        since: "5.19",
        opcode: opcode::UringCmd16::CODE,
    },
];

/// Builds a worker ring: `entries` SQEs, a CQ four times as large (multishot operations post
/// many completions per submission), single issuer, deferred and cooperative task running.
pub fn build(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_cqsize(entries.saturating_mul(4))
        .build(entries)
        .map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    " (io_uring is disabled for this process: see /proc/sys/kernel/io_uring_disabled and seccomp policies)"
                }
                Some(libc::EINVAL) => {
                    " (the kernel lacks IORING_SETUP_DEFER_TASKRUN / SINGLE_ISSUER: kernel 6.1 or newer is required)"
                }
                Some(libc::ENOMEM) => " (locked-memory limit too small for the ring: raise RLIMIT_MEMLOCK)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("cannot create an io_uring instance: {e}{hint}"))
        })
}

/// Checks at start that this kernel has everything the runtime uses; the error names the first
/// missing operation or feature and the kernel version that introduced it.
pub fn probe() -> io::Result<()> {
    let ring = build(64)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(missing(
            "IORING_FEAT_EXT_ARG (timeouts on io_uring_enter)",
            "5.11",
        ));
    }
    if !ring.params().is_feature_submit_stable() {
        return Err(missing("IORING_FEAT_SUBMIT_STABLE", "5.5"));
    }
    if !ring.params().is_feature_nodrop() {
        return Err(missing("IORING_FEAT_NODROP", "5.5"));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring opcode probe failed: {e} (kernel 5.6 or newer is required)"),
        )
    })?;
    for need in NEEDS {
        if !probe.is_supported(need.opcode) {
            return Err(missing(need.what, need.since));
        }
    }
    ring.submitter()
        .register_files_sparse(8)
        .map_err(|e| io::Error::new(e.kind(), format!("sparse fixed-file tables are not supported: {e} (kernel 5.19 or newer is required)")))?;
    Ok(())
}

fn missing(what: &str, since: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("this kernel lacks {what}, which ringproxy needs (Linux {since} or newer)"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_every_feature_we_use() {
        // The project's machines run 6.18; if this fails the error names what is missing.
        super::probe().unwrap();
    }
}
