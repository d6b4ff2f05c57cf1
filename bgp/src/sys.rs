//! The socket options the BGP driver needs that `socket2` does not offer: TCP MD5 signatures
//! (RFC 2385, `TCP_MD5SIG`) and the generalized TTL security mechanism (RFC 5082,
//! `IP_MINTTL` / `IPV6_MINHOPCOUNT`); and glibc's `mallopt` for the standalone binary.
//!
//! This is the crate's one unsafe module: `setsockopt` takes a raw pointer and length, and
//! the MD5 option's argument is a C struct. Every call passes a pointer to a live, correctly
//! sized value on the stack and checks the return code. `mallopt` is an FFI call with plain
//! integer arguments.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    tcpm_addr: libc::sockaddr_storage,
    tcpm_flags: u8,
    tcpm_prefixlen: u8,
    tcpm_keylen: u16,
    tcpm_ifindex: u32,
    tcpm_key: [u8; libc::TCP_MD5SIG_MAXKEYLEN],
}

/// The longest key the kernel accepts.
pub const MD5_MAX_KEY_LEN: usize = libc::TCP_MD5SIG_MAXKEYLEN;

/// Sets (or with `key == None`, removes) the TCP MD5 key used for segments to and from
/// `peer` on `sock`. On a listening socket this makes the kernel accept (and sign) only
/// connections from `peer` that carry the right signature; one call per configured peer.
pub fn set_md5_key(sock: &impl AsRawFd, peer: IpAddr, key: Option<&[u8]>) -> io::Result<()> {
    let key = key.unwrap_or_default();
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 key is {} octets, at most {MD5_MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    // SAFETY: all-zero is a valid value of this plain-data C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe {
                &mut *(&mut sig.tcpm_addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in)
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut sig.tcpm_addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6)
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.tcpm_keylen = key.len() as u16;
    sig.tcpm_key[..key.len()].copy_from_slice(key);
    setsockopt(sock, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// GTSM (RFC 5082): drop segments whose TTL (hop limit) is below `min` on `sock`. `v6`
/// selects the IPv6 option for IPv6 sockets.
pub fn set_min_ttl(sock: &impl AsRawFd, v6: bool, min: u8) -> io::Result<()> {
    let v = libc::c_int::from(min);
    if v6 {
        setsockopt(sock, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &v)
    } else {
        setsockopt(sock, libc::IPPROTO_IP, libc::IP_MINTTL, &v)
    }
}

fn setsockopt<T>(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of `size_of::<T>()` bytes for the whole call; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins glibc's mmap threshold at `bytes` (`M_MMAP_THRESHOLD`). glibc otherwise raises the
/// threshold each time a large mmapped block is freed, so the RIB's growing tables end up in
/// the heap between live blocks, where what they free is neither reused nor returned. Must run
/// before other threads start (a process-wide setting). Returns whether glibc took it; other C
/// libraries have no such option.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn pin_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt takes two integers and only changes allocator parameters.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn pin_mmap_threshold(_bytes: i32) -> bool {
    false
}
