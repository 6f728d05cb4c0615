//! Giving freed memory back to the system after bursts of traffic (issue #19).
//!
//! Connections come and go on several threads, and glibc's malloc keeps what they
//! freed in per-thread arenas: after bursts of a few hundred connections a peer held
//! 60-110 MB that nothing used, and kept it for good (`malloc_trim(0)` gave it back).
//! A library cannot choose its host's allocator, so every engine looks, every
//! [`EVERY`], at how much glibc holds free, and asks glibc to return it
//! (`malloc_trim`) when more than [`SLACK`] is free and, since the last trim, either
//! the process's resident memory or the free pool grew by more than [`SLACK`]. glibc
//! still counts trimmed pages as free, so the free pool alone cannot tell a heap
//! already trimmed from one that filled up again; resident memory can. Resident memory
//! alone misses a trim that came in the middle of a burst, while the memory was still
//! in use: the burst's end frees it without the resident set growing any further, and
//! only the free pool shows it. A fragmented heap is trimmed once or twice per burst,
//! not every 10 s, and under steady load nothing is trimmed.
//!
//! `mallinfo2` appeared in glibc 2.33; it is looked up when the process runs, so the
//! library still loads on older glibc (manylinux2014), where this does nothing.
//! Elsewhere (another libc, or a host with its own allocator) it does nothing either.

use std::time::Duration;

/// How often the free pool is looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// Growth of the free pool, since the last trim, that makes the next: a few bursts'
/// worth of buffers, so that steady traffic is not trimmed and re-faulted over and over.
pub(crate) const SLACK: usize = 8 << 20;

/// Runs until its runtime stops.
pub(crate) async fn run() {
    let mut base = Base::default();
    loop {
        tokio::time::sleep(EVERY).await;
        // mallinfo2 and malloc_trim walk the arenas under their locks: not on a worker.
        let step = tokio::task::spawn_blocking(move || look(base)).await;
        match step {
            Ok(Some(next)) => base = next,
            // No mallinfo2 (so nothing to do), or the runtime is going away.
            Ok(None) | Err(_) => return,
        }
    }
}

/// What the next trim is measured from.
#[derive(Clone, Copy, Debug, Default)]
struct Base {
    /// Resident memory after the last trim, or lower since.
    resident: usize,
    /// glibc's free pool just after the last trim.
    free: usize,
}

/// One look: trims when more than [`SLACK`] is free and the resident memory or the
/// free pool is more than [`SLACK`] above `base`. Returns the next base: the figures
/// after a trim, else `base` with the lower resident memory of the two (memory given
/// back otherwise counts from there). `None` without `mallinfo2`.
fn look(base: Base) -> Option<Base> {
    let free = free_bytes()?;
    let rss = resident_bytes()?;
    let grown = rss > base.resident.saturating_add(SLACK) || free > base.free.saturating_add(SLACK);
    if free <= SLACK || !grown {
        return Some(Base {
            resident: base.resident.min(rss),
            ..base
        });
    }
    trim();
    let after = Base {
        resident: resident_bytes().unwrap_or(rss),
        free: free_bytes().unwrap_or(free),
    };
    tracing::debug!(
        free,
        resident_before = rss,
        resident_after = after.resident,
        "returned freed memory to the system"
    );
    Some(after)
}

/// The process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Bytes glibc holds free in its arenas, `None` where `mallinfo2` does not exist.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> Option<usize> {
    use std::sync::OnceLock;
    type MallInfo2 = unsafe extern "C" fn() -> libc::mallinfo2;
    static FUNC: OnceLock<Option<MallInfo2>> = OnceLock::new();
    let f = FUNC.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the
        // symbol up; a non-null result is glibc's `struct mallinfo2 mallinfo2(void)`.
        unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr());
            (!sym.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, MallInfo2>(sym))
        }
    });
    // SAFETY: the function takes no arguments and returns a plain struct by value.
    f.map(|f| unsafe { f() }.fordblks)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> Option<usize> {
    None
}

/// Returns free memory to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim (glibc 2.0 on) only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::{free_bytes, look, resident_bytes, Base, SLACK};
    use std::sync::Mutex;

    /// The two tests free 60 MB each: run alongside, one's burst would be the other's
    /// growth. They take turns.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// A burst's memory: many mid-sized blocks in use (below the mmap threshold, so
    /// they live in the heap).
    fn burst() -> Vec<Vec<u8>> {
        (0..1024).map(|_| vec![1u8; 64 * 1024]).collect()
    }

    /// The burst's end: all freed but one block in 16, which pins the heap so it
    /// cannot just shrink. Returns what is kept.
    fn end(blocks: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 16 == 15).then_some(b))
            .collect()
    }

    fn resident() -> usize {
        resident_bytes().expect("/proc/self/statm")
    }

    fn free() -> usize {
        free_bytes().expect("glibc 2.33 or later has mallinfo2")
    }

    #[test]
    fn a_grown_heap_is_trimmed_once_and_not_again() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let blocks = burst();
        let before = resident();
        let keep = end(blocks);
        assert!(free() > SLACK, "free {}", free());
        // From a base of 0 the heap has grown: trimmed, and about 60 MB of the 64 MB
        // freed leave the resident set (other tests run alongside, hence the margin).
        let after = look(Base::default()).expect("mallinfo2");
        assert!(
            after.resident + (32 << 20) < before,
            "resident {before} -> {after:?}"
        );
        // From there nothing has grown: the next look keeps the base (a trim would
        // have taken the free pool afresh), no trim.
        let next = look(after).expect("mallinfo2");
        assert!(
            next.resident <= after.resident && next.free == after.free,
            "{after:?} -> {next:?}"
        );
        assert!(keep.iter().all(|b| b.iter().all(|&x| x == 1)));
    }

    /// A trim in the middle of a burst, while its memory is in use, sets a high base;
    /// when the burst ends the memory is freed but stays resident, and the resident
    /// set does not grow any further. The free pool's growth still trims it.
    #[test]
    fn memory_freed_after_a_trim_mid_burst_is_trimmed() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let blocks = burst();
        let mid_burst = Base {
            resident: resident(),
            free: free(),
        };
        let keep = end(blocks);
        let before = resident();
        let after = look(mid_burst).expect("mallinfo2");
        assert!(
            after.resident + (32 << 20) < before,
            "resident {before} -> {after:?} (base {mid_burst:?})"
        );
        assert!(keep.iter().all(|b| b.iter().all(|&x| x == 1)));
    }
}
