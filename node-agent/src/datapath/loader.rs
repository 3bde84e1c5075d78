//! Loads `bpf/datapath.c` (compiled by the build script) with aya, pins its maps under the
//! node's folder of `/sys/fs/bpf`, attaches its programs to devices, and gives typed access
//! to the maps.
//!
//! Restart safety: maps pinned by a previous agent are reused as they are (aya opens a
//! pinned map instead of creating one), and programs are attached as tc filters through
//! netlink at a fixed priority and handle, which outlive the agent. A new agent replaces
//! each filter in one netlink request, so a device is never without a program, and the
//! maps are never emptied: they keep enforcing the last programmed policy until the new
//! agent has computed the same or newer entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, RingBuf};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::abi::{
    DP_MAP_CT, DP_MAP_ENDPOINTS, DP_MAP_EVENTS, DP_MAP_IPCACHE, DP_MAP_LOCAL_IPS, DP_MAP_POLICY,
    EndpointValue, IpcacheKey, IpcacheValue, LocalIpKey, PolicyKey, PolicyValue,
};
use super::bytes;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// Where maps are pinned unless configured: one folder per node name, so that several
/// test nodes on one machine keep apart.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sidecarless";

/// tc filter priority and handle of our programs. Fixed so that a restarted agent finds
/// and replaces its own filters, and low so that they run before other filters.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
pub const PROG_FROM_NETDEV: &str = "from_netdev";

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("creating the pin folder {path}: {error}")]
    PinDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("mounting bpffs at {path}: {error} (the agent needs root)")]
    MountBpffs {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "loading the BPF object (pin folder {pin_dir}): {error}; the agent needs root, a mounted bpffs at /sys/fs/bpf and a kernel with BTF"
    )]
    Load {
        pin_dir: PathBuf,
        error: Box<EbpfError>,
    },
    #[error("BPF program {name}: {error}")]
    Program {
        name: String,
        error: Box<ProgramError>,
    },
    #[error("BPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("BPF map {name}: {error}")]
    Map {
        name: &'static str,
        error: Box<MapError>,
    },
    #[error("attaching {program} to {device} ({hook}): {error}")]
    Attach {
        program: &'static str,
        device: String,
        hook: &'static str,
        error: Box<ProgramError>,
    },
}

/// Typed handles of the maps.
pub struct Maps {
    pub ipcache: LpmTrie<MapData, [u8; 20], [u8; 4]>,
    pub endpoints: BpfHashMap<MapData, [u8; 4], [u8; 28]>,
    pub local_ips: BpfHashMap<MapData, [u8; 20], [u8; 4]>,
    pub policy: LpmTrie<MapData, [u8; 12], [u8; 8]>,
    pub ct: BpfHashMap<MapData, [u8; 40], [u8; 16]>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

/// The loaded object: programs ready to attach, and the maps.
pub struct Loaded {
    ebpf: Ebpf,
    pub maps: Maps,
    pub events: Option<RingBuf<MapData>>,
    pub pin_dir: PathBuf,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> LoaderError {
    move |source| LoaderError::Map {
        name,
        error: Box::new(source),
    }
}

impl Loaded {
    /// Loads the object, reusing the maps pinned in `pin_dir` if a previous agent left them.
    pub fn load(pin_dir: &Path) -> Result<Self, LoaderError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(|source| LoaderError::PinDir {
            path: pin_dir.to_path_buf(),
            error: source,
        })?;
        let names = [
            DP_MAP_IPCACHE,
            DP_MAP_ENDPOINTS,
            DP_MAP_LOCAL_IPS,
            DP_MAP_POLICY,
            DP_MAP_CT,
            DP_MAP_EVENTS,
        ];
        let paths: Vec<(&str, PathBuf)> = names.iter().map(|n| (*n, pin_dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| LoaderError::Load {
            pin_dir: pin_dir.to_path_buf(),
            error: Box::new(source),
        })?;
        for name in [PROG_FROM_POD, PROG_TO_POD, PROG_FROM_NETDEV] {
            let program = classifier(&mut ebpf, name)?;
            program.load().map_err(|source| LoaderError::Program {
                name: name.to_string(),
                error: Box::new(source),
            })?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(LoaderError::MissingMap(name));
        let maps = Maps {
            ipcache: LpmTrie::try_from(take(DP_MAP_IPCACHE)?).map_err(map_err(DP_MAP_IPCACHE))?,
            endpoints: BpfHashMap::try_from(take(DP_MAP_ENDPOINTS)?)
                .map_err(map_err(DP_MAP_ENDPOINTS))?,
            local_ips: BpfHashMap::try_from(take(DP_MAP_LOCAL_IPS)?)
                .map_err(map_err(DP_MAP_LOCAL_IPS))?,
            policy: LpmTrie::try_from(take(DP_MAP_POLICY)?).map_err(map_err(DP_MAP_POLICY))?,
            ct: BpfHashMap::try_from(take(DP_MAP_CT)?).map_err(map_err(DP_MAP_CT))?,
        };
        let events = Some(RingBuf::try_from(take(DP_MAP_EVENTS)?).map_err(map_err(DP_MAP_EVENTS))?);
        Ok(Self {
            ebpf,
            maps,
            events,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Attaches `from_pod` and `to_pod` to a pod's host-side device.
    pub fn attach_endpoint(&mut self, device: &str) -> Result<(), LoaderError> {
        self.attach(PROG_FROM_POD, device, TcAttachType::Ingress)?;
        self.attach(PROG_TO_POD, device, TcAttachType::Egress)
    }

    /// Attaches `from_netdev` to an uplink.
    pub fn attach_uplink(&mut self, device: &str) -> Result<(), LoaderError> {
        self.attach(PROG_FROM_NETDEV, device, TcAttachType::Ingress)
    }

    fn attach(
        &mut self,
        program: &'static str,
        device: &str,
        hook: TcAttachType,
    ) -> Result<(), LoaderError> {
        let hook_name = match hook {
            TcAttachType::Ingress => "tc ingress",
            _ => "tc egress",
        };
        let attach_err = |source| LoaderError::Attach {
            program,
            device: device.to_string(),
            hook: hook_name,
            error: Box::new(source),
        };
        // EEXIST when the device already has its clsact qdisc (ours or a CNI's).
        let _ = aya::programs::tc::qdisc_add_clsact(device);
        let prog = classifier(&mut self.ebpf, program)?;
        // Replace our filter if one is there (one netlink request, so the device is never
        // without a program), else create it.
        let replaced = SchedClassifierLink::attached(device, hook, TC_PRIORITY, TC_HANDLE, None)
            .ok()
            .and_then(|link| prog.attach_to_link(link).ok());
        let id = match replaced {
            Some(id) => id,
            None => prog
                .attach_with_options(
                    device,
                    hook,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: TC_PRIORITY,
                        handle: TC_HANDLE,
                        classid: None,
                    }),
                )
                .map_err(attach_err)?,
        };
        let link = prog.take_link(id).map_err(attach_err)?;
        // The filter must outlive this agent (see the module comment); dropping the link
        // would detach it.
        std::mem::forget(link);
        Ok(())
    }
}

/// Pins only survive the agent on a bpffs. Many machines mount one at /sys/fs/bpf at boot;
/// where none is mounted (and the pin folder is under /sys/fs/bpf) the agent mounts it, as
/// Cilium's agent does. A bpffs mounted in a private mount namespace (`ip netns exec`
/// makes one) would be a different instance whose pins a restarted agent cannot see, so
/// run the agent with `nsenter --net=...` rather than `ip netns exec`.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), LoaderError> {
    const ROOT: &str = "/sys/fs/bpf";
    if !pin_dir.starts_with(ROOT) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next());
        mount_point == Some(ROOT) && fstype == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    rustix::mount::mount("bpf", ROOT, "bpf", rustix::mount::MountFlags::empty(), None).map_err(
        |e| LoaderError::MountBpffs {
            path: PathBuf::from(ROOT),
            error: e.into(),
        },
    )?;
    tracing::info!(path = ROOT, "mounted bpffs");
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoaderError::Program {
            name: name.to_string(),
            error: Box::new(source),
        })
}

/// Removes our filter from a device (the pod left; its device may already be gone).
pub fn detach(device: &str, hook: TcAttachType) {
    if let Ok(link) = SchedClassifierLink::attached(device, hook, TC_PRIORITY, TC_HANDLE, None) {
        drop(link);
    }
}

impl Maps {
    pub fn read_ipcache(&self) -> BTreeMap<IpcacheKey, IpcacheValue> {
        self.ipcache
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                (
                    bytes::ipcache_key_from(k.prefix_len(), &k.data()),
                    bytes::ipcache_value_from(&v),
                )
            })
            .collect()
    }

    pub fn read_policy(&self) -> BTreeMap<PolicyKey, PolicyValue> {
        self.policy
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                (
                    bytes::policy_key_from(k.prefix_len(), &k.data()),
                    bytes::policy_value_from(&v),
                )
            })
            .collect()
    }

    /// ifindex -> endpoint.
    pub fn read_endpoints(&self) -> BTreeMap<u32, EndpointValue> {
        self.endpoints
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (u32::from_ne_bytes(k), bytes::endpoint_value_from(&v)))
            .collect()
    }

    pub fn read_local_ips(&self) -> BTreeMap<LocalIpKey, u32> {
        self.local_ips
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (bytes::local_ip_key_from(&k), u32::from_ne_bytes(v)))
            .collect()
    }

    pub fn put_ipcache(&mut self, k: &IpcacheKey, v: &IpcacheValue) -> Result<(), LoaderError> {
        let key = Key::new(k.prefixlen, bytes::ipcache_key_data(k));
        self.ipcache
            .insert(&key, bytes::ipcache_value(v), 0)
            .map_err(map_err(DP_MAP_IPCACHE))
    }

    pub fn delete_ipcache(&mut self, k: &IpcacheKey) -> Result<(), LoaderError> {
        let key = Key::new(k.prefixlen, bytes::ipcache_key_data(k));
        ignore_missing(self.ipcache.remove(&key)).map_err(map_err(DP_MAP_IPCACHE))
    }

    pub fn put_policy(&mut self, k: &PolicyKey, v: &PolicyValue) -> Result<(), LoaderError> {
        let key = Key::new(k.prefixlen, bytes::policy_key_data(k));
        self.policy
            .insert(&key, bytes::policy_value(v), 0)
            .map_err(map_err(DP_MAP_POLICY))
    }

    pub fn delete_policy(&mut self, k: &PolicyKey) -> Result<(), LoaderError> {
        let key = Key::new(k.prefixlen, bytes::policy_key_data(k));
        ignore_missing(self.policy.remove(&key)).map_err(map_err(DP_MAP_POLICY))
    }

    pub fn put_endpoint(&mut self, ifindex: u32, v: &EndpointValue) -> Result<(), LoaderError> {
        self.endpoints
            .insert(ifindex.to_ne_bytes(), bytes::endpoint_value(v), 0)
            .map_err(map_err(DP_MAP_ENDPOINTS))
    }

    pub fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), LoaderError> {
        ignore_missing(self.endpoints.remove(&ifindex.to_ne_bytes()))
            .map_err(map_err(DP_MAP_ENDPOINTS))
    }

    pub fn put_local_ip(&mut self, k: &LocalIpKey, ifindex: u32) -> Result<(), LoaderError> {
        self.local_ips
            .insert(bytes::local_ip_key(k), ifindex.to_ne_bytes(), 0)
            .map_err(map_err(DP_MAP_LOCAL_IPS))
    }

    pub fn delete_local_ip(&mut self, k: &LocalIpKey) -> Result<(), LoaderError> {
        ignore_missing(self.local_ips.remove(&bytes::local_ip_key(k)))
            .map_err(map_err(DP_MAP_LOCAL_IPS))
    }
}

/// Deleting what is already gone is success: the goal is that the entry is absent.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}
