//! Giving freed memory back to the system after bursts of traffic (issue #19).
//!
//! Connections come and go on several threads, and glibc's malloc keeps what they
//! freed in per-thread arenas: after bursts of a few hundred connections a peer held
//! 60-560 MB that nothing used, and kept it for good (`malloc_trim(0)` brought it back
//! to 16 MB). A library cannot choose its host's allocator, so every engine checks,
//! every [`EVERY`], how much glibc holds free, and when it is more than [`SLACK`] asks
//! glibc to return it (`malloc_trim`). Under steady load the free pool stays small and
//! nothing is trimmed; after a burst it is trimmed once. Elsewhere (another libc, or a
//! host that brought its own allocator) this does nothing.

use std::time::Duration;

/// How often the free pool is looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// Free bytes glibc may keep before they are given back: a few bursts' worth of
/// buffers, so that steady traffic is not trimmed and re-faulted over and over.
pub(crate) const SLACK: usize = 8 << 20;

/// Runs until its runtime stops: trims when more than [`SLACK`] bytes are held free.
pub(crate) async fn run() {
    loop {
        tokio::time::sleep(EVERY).await;
        if free_bytes().is_some_and(|free| free > SLACK) {
            // It walks the arenas, which can take milliseconds: not on a worker.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Bytes glibc holds free in its arenas, `None` where this is not glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> Option<usize> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let info = unsafe { libc::mallinfo2() };
    Some(info.fordblks)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> Option<usize> {
    None
}

/// Returns free memory to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let before = free_bytes().unwrap_or(0);
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(free_before = before, "returned freed memory to the system");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_large_free_pool_is_seen_and_trimmed() {
        // Many mid-sized blocks (below the mmap threshold, so they live in the heap),
        // freed but one in 16, which pins the heap's top so it cannot just shrink.
        let blocks: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 64 * 1024]).collect();
        let keep: Vec<Vec<u8>> = blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 16 == 15).then_some(b))
            .collect();
        let free = super::free_bytes().expect("glibc");
        assert!(free > super::SLACK, "free {free}");
        super::trim();
        // Trimming releases pages but glibc still counts them free; what must hold is
        // that it ran and the kept blocks are intact.
        assert!(keep.iter().all(|b| b.iter().all(|&x| x == 1)));
    }
}
