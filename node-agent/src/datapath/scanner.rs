//! Conntrack scans away from the agent's event loop. Reading the map costs two syscalls per
//! entry: with the tens of thousands of flows a node makes under DNS churn a scan takes
//! about 100 ms, and DNS answers waiting on the loop must not sit behind it (B7 measured
//! answers held past their bound at every FQDN expiry while the loop scanned).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};

use super::abi::{CtKey, CtValue, DP_CT_F_CLOSING, DP_DIR_EGRESS, DP_MAP_CT};
use super::bytes;
use super::controller::{
    CT_CLOSING_TIMEOUT_NS, CT_OTHER_TIMEOUT_NS, CT_TCP_TIMEOUT_NS, DatapathError, IPPROTO_TCP,
    SweepReport, ct_addr, monotonic_ns,
};
use super::loader::LoaderError;

/// The conntrack map as the agent reads it: raw key and value images.
pub(super) type CtMap = BpfHashMap<MapData, [u8; 40], [u8; 16]>;

/// (local endpoint IP, remote IP) of live egress flows.
pub type EgressFlows = BTreeSet<(IpAddr, IpAddr)>;

/// Whether an entry has been idle longer than its kind may be.
pub(super) fn is_idle(now_ns: u64, key: &CtKey, value: &CtValue) -> bool {
    let timeout = if value.flags & DP_CT_F_CLOSING != 0 {
        CT_CLOSING_TIMEOUT_NS
    } else if key.protocol == IPPROTO_TCP {
        CT_TCP_TIMEOUT_NS
    } else {
        CT_OTHER_TIMEOUT_NS
    };
    now_ns.saturating_sub(value.last_seen_ns) > timeout
}

/// Removes the idle entries and returns the pairs of the live egress flows: one scan for
/// FQDN expiry, which then needs no re-check sweep of its own. An IP found in use is kept
/// (a zombie); one that is not is withdrawn, and the only flows to it the scan could not
/// see are ones opened since, while the policy still allowed them: those are left to end
/// like the zombies' flows. Idle entries are removed here so that no idle flow to a
/// withdrawn IP can wake up on its old entry.
pub(super) fn expire_idle_and_collect(
    ct: &mut CtMap,
) -> Result<(SweepReport, EgressFlows), DatapathError> {
    let now = monotonic_ns();
    let mut report = SweepReport::default();
    let mut doomed = Vec::new();
    let mut flows = BTreeSet::new();
    for (raw_key, raw_value) in ct.iter().flatten() {
        report.scanned += 1;
        let key = bytes::ct_key_from(&raw_key);
        if is_idle(now, &key, &bytes::ct_value_from(&raw_value)) {
            doomed.push(raw_key);
            continue;
        }
        if key.direction != DP_DIR_EGRESS {
            continue;
        }
        if let (Some(s), Some(d)) = (
            ct_addr(key.family, &key.saddr),
            ct_addr(key.family, &key.daddr),
        ) {
            flows.insert((s, d));
        }
    }
    report.expired = doomed.len();
    remove_entries(ct, doomed)?;
    Ok((report, flows))
}

/// Removes `keys`; entries already gone (the programs or another sweep) are fine.
pub(super) fn remove_entries(ct: &mut CtMap, keys: Vec<[u8; 40]>) -> Result<(), DatapathError> {
    for raw_key in keys {
        match ct.remove(&raw_key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => {
                return Err(LoaderError::Map {
                    name: DP_MAP_CT,
                    error: Box::new(e),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// What the scanner thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScanJob {
    /// Remove idle entries, and hand the live egress flows to the deliver callback.
    LiveEgressFlows,
    /// Remove idle entries (the periodic conntrack expiry).
    ExpireIdle,
}

/// A thread with its own handle on the pinned conntrack map. Dropping it stops the thread
/// after the job at hand.
#[derive(Debug)]
pub struct ConntrackScanner {
    jobs: Option<mpsc::Sender<ScanJob>>,
    thread: Option<JoinHandle<()>>,
}

/// Receives the result of each [`ScanJob::LiveEgressFlows`]; false once nobody listens.
pub type DeliverFlows = Box<dyn Fn(EgressFlows) -> bool + Send>;

impl ConntrackScanner {
    /// Opens the conntrack map pinned in `pin_dir` and starts the thread.
    pub fn start(pin_dir: &Path, deliver: DeliverFlows) -> Result<Self, DatapathError> {
        let map_error = |e: MapError| -> DatapathError {
            LoaderError::Map {
                name: DP_MAP_CT,
                error: Box::new(e),
            }
            .into()
        };
        let data = MapData::from_pin(pin_dir.join(DP_MAP_CT)).map_err(map_error)?;
        let map = aya::maps::Map::from_map_data(data).map_err(map_error)?;
        let mut ct: CtMap = BpfHashMap::try_from(map).map_err(map_error)?;
        let (jobs, queue) = mpsc::channel::<ScanJob>();
        let thread = std::thread::Builder::new()
            .name("conntrack-scan".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // Jobs asked for while one ran are done once: a second scan in a row
                    // would only say the same thing again.
                    let mut pending = BTreeSet::from([job]);
                    pending.extend(queue.try_iter());
                    for job in pending {
                        if !run(job, &mut ct, &deliver) {
                            return;
                        }
                    }
                }
            })
            .map_err(DatapathError::ScanThread)?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a job; false if the thread is gone.
    pub fn request(&self, job: ScanJob) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }
}

/// Runs one job; false when the flows have nobody to go to.
fn run(job: ScanJob, ct: &mut CtMap, deliver: &DeliverFlows) -> bool {
    let (report, flows) = match expire_idle_and_collect(ct) {
        Ok(done) => done,
        Err(error) => {
            // The flows found are incomplete: expiry waits for the next tick's scan.
            tracing::warn!(%error, "conntrack scan failed");
            return true;
        }
    };
    if report.expired > 0 {
        tracing::info!(
            scanned = report.scanned,
            expired = report.expired,
            "idle conntrack entries removed"
        );
    }
    match job {
        ScanJob::LiveEgressFlows => deliver(flows),
        ScanJob::ExpireIdle => true,
    }
}

impl Drop for ConntrackScanner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
