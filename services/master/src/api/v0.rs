//! Baetyl v1 compatibility of the API: the deprecated v0 routes (the v1 routes without `/v1`, which v1 still
//! served for agents older than 0.1.4), and v1's field names in inspect's `hardware` section, added next to
//! ours (`host_stats.host_id`, `platform`, `boot_time`, `process_num`; `mem_stats.swap_used`; each network
//! interface's `index`, `mac` and `addrs`).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::ApiState;

/// The v0 paths, served by the same handlers as their `/v1` twins (and behind the same authentication).
pub fn routes(router: Router<Arc<ApiState>>) -> Router<Arc<ApiState>> {
    router
        .route("/system/inspect", get(super::inspect))
        .route("/system/update", put(super::update))
        .route("/ports/available", get(super::available_port))
        .route(
            "/services/{svc}/instances/{inst}/start",
            put(super::start_instance),
        )
        .route(
            "/services/{svc}/instances/{inst}/stop",
            put(super::stop_instance),
        )
}

/// Adds v1's names to a `hardware` sample (ours stay as they are).
pub fn add_v1_fields(hardware: &mut Value, host_id: &str) {
    if let Some(host) = hardware
        .get_mut("host_stats")
        .and_then(Value::as_object_mut)
    {
        let os = os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
        let field = |k: &str| os.get(k).cloned().unwrap_or_default();
        host.insert("host_id".into(), host_id.into());
        host.insert("platform".into(), field("ID").into());
        host.insert(
            "platform_family".into(),
            os.get("ID_LIKE")
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
                .unwrap_or_else(|| field("ID"))
                .into(),
        );
        host.insert("platform_version".into(), field("VERSION_ID").into());
        host.insert("architecture".into(), std::env::consts::ARCH.into());
        if let Some(bt) = boot_time(&std::fs::read_to_string("/proc/stat").unwrap_or_default()) {
            host.insert("boot_time".into(), bt.into());
        }
        if let Some(p) = host.get("procs").cloned() {
            host.insert("process_num".into(), p);
        }
    }
    if let Some(mem) = hardware.get_mut("mem_stats").and_then(Value::as_object_mut) {
        let total = mem.get("swap_total").and_then(Value::as_u64).unwrap_or(0);
        let free = mem.get("swap_free").and_then(Value::as_u64).unwrap_or(0);
        let used = total.saturating_sub(free);
        mem.insert("swap_used".into(), used.into());
        let pct = if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        };
        mem.insert("swap_used_percent".into(), pct.into());
    }
    if let Some(ifaces) = hardware
        .get_mut("net_stats")
        .and_then(|n| n.get_mut("interfaces"))
        .and_then(Value::as_array_mut)
    {
        let addrs = interface_addresses();
        for i in ifaces.iter_mut() {
            let Some(obj) = i.as_object_mut() else {
                continue;
            };
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            // Interface names come from /proc/net/dev; never let one walk out of /sys/class/net.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                continue;
            }
            let sys = std::path::Path::new("/sys/class/net").join(&name);
            let read = |f: &str| {
                std::fs::read_to_string(sys.join(f))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            if let Ok(index) = read("ifindex").parse::<u64>() {
                obj.insert("index".into(), index.into());
            }
            let mac = read("address");
            if !mac.is_empty() && mac != "00:00:00:00:00:00" {
                obj.insert("mac".into(), mac.into());
            }
            let list: Vec<Value> = addrs
                .get(&name)
                .map(|v| {
                    v.iter()
                        .map(|(ip, prefix)| json!({"network": "ip+net", "address": format!("{ip}/{prefix}")}))
                        .collect()
                })
                .unwrap_or_default();
            obj.insert("addrs".into(), list.into());
        }
    }
}

fn os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// Seconds since the epoch at boot (`btime` of /proc/stat), v1's `boot_time`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Each interface's IPv4 and IPv6 addresses with their prefix lengths, from getifaddrs(3).
fn interface_addresses() -> BTreeMap<String, Vec<(IpAddr, u32)>> {
    let mut out: BTreeMap<String, Vec<(IpAddr, u32)>> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we only read and then free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed until the end of this function.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is; the netmask, when present,
        // has the same family.
        let pair = unsafe { address_of(ifa.ifa_addr, ifa.ifa_netmask) };
        if let Some(pair) = pair {
            out.entry(name).or_default().push(pair);
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// # Safety
/// `addr` must point to a valid sockaddr; `mask` must be null or a sockaddr of the same family.
unsafe fn address_of(
    addr: *const libc::sockaddr,
    mask: *const libc::sockaddr,
) -> Option<(IpAddr, u32)> {
    // SAFETY: the caller guarantees both pointers; each is read as the type its family names.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let a = &*(addr as *const libc::sockaddr_in);
                let ip = IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes());
                let prefix = if mask.is_null() {
                    32
                } else {
                    u32::from_be((*(mask as *const libc::sockaddr_in)).sin_addr.s_addr).count_ones()
                };
                Some((ip, prefix))
            }
            libc::AF_INET6 => {
                let a = &*(addr as *const libc::sockaddr_in6);
                let ip = IpAddr::from(a.sin6_addr.s6_addr);
                let prefix = if mask.is_null() {
                    128
                } else {
                    (*(mask as *const libc::sockaddr_in6))
                        .sin6_addr
                        .s6_addr
                        .iter()
                        .map(|b| b.count_ones())
                        .sum()
                };
                Some((ip, prefix))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_are_added_next_to_ours() {
        let mut hw = crate::stats::HostSampler::default().sample(std::path::Path::new("/"));
        add_v1_fields(&mut hw, "machine-1");
        let host = &hw["host_stats"];
        assert_eq!(host["host_id"], "machine-1");
        assert!(
            host["boot_time"].as_u64().unwrap() > 1_000_000_000,
            "{host}"
        );
        assert_eq!(host["process_num"], host["procs"]);
        assert!(host["platform"].is_string());
        let mem = &hw["mem_stats"];
        assert!(mem["used"].as_u64().unwrap() > 0 && mem["used_percent"].is_number());
        assert!(mem["swap_used"].is_u64());
        let ifaces = hw["net_stats"]["interfaces"].as_array().unwrap();
        let lo = ifaces.iter().find(|i| i["name"] == "lo").unwrap();
        assert!(lo["index"].as_u64().unwrap() >= 1, "{lo}");
        let addrs: Vec<&str> = lo["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["address"].as_str().unwrap())
            .collect();
        assert!(addrs.contains(&"127.0.0.1/8"), "{addrs:?}");
    }

    #[tokio::test]
    async fn v0_routes_and_the_file_field_of_v1_agents() {
        use crate::engine::fake::FakeEngine;
        use crate::test_rig::{Master, call};
        let app = "services:\n  m: {image: svc}\n  rt: {image: svc, replica: 0}\n";
        let m = Master::start("update: {health: 100ms}", app, FakeEngine::new(), &["m/m"]).await;
        // The operator: the routes must not depend on which roles may call what.
        let c = m.operator();
        let (status, body) = call(&c, "GET", "/system/inspect", "").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("inspect JSON");
        assert!(v["hardware"]["host_stats"]["host_id"].is_string(), "{v}");
        assert_eq!(
            call(&m.anonymous(), "GET", "/system/inspect", "").await.0,
            401
        );
        let (status, body) = call(&c, "GET", "/ports/available", "").await;
        assert!(status == 200 && body.contains("port"), "{body}");
        let start = "/services/rt/instances/rt-1/start";
        assert_eq!(call(&c, "PUT", start, "{}").await, (200, String::new()));
        let stop = "/services/rt/instances/rt-1/stop";
        assert_eq!(call(&c, "PUT", stop, "").await, (200, String::new()));
        std::fs::write(m.path("same.yml"), app).expect("write");
        let (status, body) = call(&c, "PUT", "/system/update", r#"{"file":"same.yml"}"#).await;
        assert_eq!(status, 200, "a v1 agent's `file` is the path: {body}");
        m.stop().await.expect("stop");
    }

    #[test]
    fn parses_os_release_and_boot_time() {
        let os = os_release("ID=debian\nVERSION_ID=\"12\"\nID_LIKE=\"rhel fedora\"\n");
        assert_eq!(os["ID"], "debian");
        assert_eq!(os["VERSION_ID"], "12");
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }
}
