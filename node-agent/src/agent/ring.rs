//! Reads the datapath's event ring buffer and hands every event to the hooks (flow
//! records, `monitor`). The ring is drained completely on each wake-up so that a burst of
//! drops costs one wake-up; when the reader falls behind the kernel drops new events
//! (`bpf_ringbuf_reserve` fails) rather than blocking packets.
//!
//! A plain thread blocked in poll(2) rather than a tokio task: registering the ring's fd
//! with tokio (`AsyncFd::register`) is `unsafe`, which this workspace forbids, and one
//! thread per agent costs nothing.

use std::os::fd::AsFd;
use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::Hooks;
use crate::datapath::bytes;

pub fn spawn_reader(mut ring: RingBuf<MapData>, hooks: Arc<Hooks>) {
    let spawned = std::thread::Builder::new()
        .name("datapath-events".into())
        .spawn(move || {
            // The programs wake the reader only for drops (and a filling ring); policy
            // verdicts are drained by this periodic wake-up, so they reach flow records
            // at most this late.
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            loop {
                drain(&mut ring, &hooks);
                let fd = ring.as_fd();
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                if let Err(error) = poll(&mut fds, Some(&timeout))
                    && error != rustix::io::Errno::INTR
                {
                    tracing::error!(%error, "polling the datapath event ring failed; no more drop events will be reported");
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the datapath event reader; no drop events will be reported");
    }
}

fn drain(ring: &mut RingBuf<MapData>, hooks: &Hooks) {
    let mut malformed = 0u64;
    while let Some(item) = ring.next() {
        match bytes::dp_event_from(&item) {
            Some(event) => hooks.datapath_event(&event),
            None => malformed += 1,
        }
    }
    if malformed > 0 {
        tracing::warn!(
            malformed,
            "datapath events of an unexpected size skipped (programs and agent built from different headers?)"
        );
    }
}
