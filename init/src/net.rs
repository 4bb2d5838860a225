//! The minimum of networking PID 1 does itself: loopback up, and one interface with a static IPv4 address and a
//! default route (QEMU's user networking: 10.0.2.15/24 via 10.0.2.2). Classic SIOCSIF*/SIOCADDRT ioctls on an
//! AF_INET socket, so no netlink library and no `ip` binary is needed in the image.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use nix::errno::Errno;

use crate::error::SysError;

/// An IPv4 address with its prefix length, written `10.0.2.15/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        };
        Ipv4Addr::from(bits)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an IPv4 address with prefix; write e.g. 10.0.2.15/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The kernel's `struct rtentry` (glibc's libc crate does not define it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux; this is how the socket API is
    // meant to be used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn err(what: String) -> impl FnOnce(Errno) -> SysError {
    move |errno| SysError::Other { what, errno }
}

fn socket() -> Result<OwnedFd, SysError> {
    // SAFETY: socket(2) with constant arguments; the returned fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket(AF_INET)".into())(Errno::last()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq, SysError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(err(format!("interface name `{name}`"))(Errno::EINVAL));
    }
    // SAFETY: ifreq is plain data (a name and a union of plain data); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { MaybeUninit::zeroed().assume_init() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    fd: &OwnedFd,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
    what: String,
) -> Result<(), SysError> {
    // SAFETY: every caller passes a pointer to the struct type `request` expects (ifreq or rtentry), valid for
    // the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(err(what)(Errno::last()))
    } else {
        Ok(())
    }
}

/// A socket and the interface request for `name` with its flags read (SIOCGIFFLAGS).
fn read_flags(name: &str) -> Result<(OwnedFd, libc::ifreq), SysError> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    ioctl(
        &fd,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        format!("get flags of {name}"),
    )?;
    Ok((fd, req))
}

/// Sets IFF_UP on `name`.
pub fn link_up(name: &str) -> Result<(), SysError> {
    let (fd, mut req) = read_flags(name)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        &fd,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        format!("bring {name} up"),
    )
}

/// Whether `name` has IFF_UP set (in this process's network namespace).
pub fn link_is_up(name: &str) -> Result<bool, SysError> {
    let (_fd, req) = read_flags(name)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

/// Gives `name` the address, brings it up, and adds a default route through `gateway`.
pub fn configure(name: &str, cidr: Ipv4Cidr, gateway: Option<Ipv4Addr>) -> Result<(), SysError> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(cidr.addr);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::ifreq).cast(),
        format!("set address {cidr} on {name}"),
    )?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(cidr.netmask());
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK,
        (&mut req as *mut libc::ifreq).cast(),
        format!("set netmask on {name}"),
    )?;
    link_up(name)?;
    if let Some(gw) = gateway {
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_v4(gw),
            rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match ioctl(
            &fd,
            libc::SIOCADDRT,
            (&mut rt as *mut RtEntry).cast(),
            format!("default route via {gw}"),
        ) {
            Err(SysError::Other {
                errno: Errno::EEXIST,
                ..
            })
            | Ok(()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The first interface in `/sys/class/net` that is not loopback (sorted by name).
pub fn first_interface(sys_class_net: &std::path::Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_gives_netmask() {
        let c: Ipv4Cidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            "1.2.3.4/0".parse::<Ipv4Cidr>().unwrap().netmask(),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            "1.2.3.4/32".parse::<Ipv4Cidr>().unwrap().netmask(),
            Ipv4Addr::BROADCAST
        );
        assert!("10.0.2.15".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.2.15/33".parse::<Ipv4Cidr>().is_err());
    }
}
