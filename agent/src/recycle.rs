//! Fragment buffers, reused. A fragment is about a megabyte built into one buffer that lives
//! until KVS acknowledges it; allocating each afresh faulted in every page of it again (the
//! allocator hands large blocks back to the kernel on free), which was 6 % of the agent's
//! CPU at sixteen streams. Buffers come back here when the last reference to a fragment's
//! bytes drops, and the next fragment is built in one of them.

use std::sync::Mutex;

use bytes::Bytes;

/// Free buffers kept at most (their pages stay resident: RSS), by count and by bytes.
const MAX_KEPT: usize = 8;
const MAX_KEPT_BYTES: usize = 64 << 20;
/// Smaller buffers are not worth keeping: the allocator reuses those by itself.
const MIN_KEPT: usize = 128 << 10;

/// The fragment buffers of the whole process.
static FRAGMENTS: Pool = Pool::new();

/// An empty buffer with room for at least `capacity` bytes, reused when one is free.
pub fn take(capacity: usize) -> Vec<u8> {
    FRAGMENTS.take(capacity)
}

/// `buf` as shared bytes whose buffer comes back when the last clone drops.
pub fn bytes(buf: Vec<u8>) -> Bytes {
    FRAGMENTS.bytes(buf)
}

/// Free buffers.
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = {
            let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // The smallest that fits, else the largest (grown below).
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            let largest = || (0..free.len()).max_by_key(|&i| free[i].capacity());
            fit.or_else(largest).map(|i| free.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_default();
        buf.reserve_exact(capacity);
        buf
    }

    fn bytes(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled(buf, self))
    }

    fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() < MIN_KEPT {
            return;
        }
        buf.clear();
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if free.len() < MAX_KEPT && kept + buf.capacity() <= MAX_KEPT_BYTES {
            free.push(buf);
        }
    }
}

struct Recycled(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.1.put(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_fragments_buffer_is_the_next_ones() {
        static POOL: Pool = Pool::new();
        let mut buf = POOL.take(1 << 20);
        buf.extend_from_slice(&[7; 1 << 20]);
        let ptr = buf.as_ptr();
        let shared = POOL.bytes(buf);
        let clone = shared.clone();
        drop(shared);
        assert_eq!(clone.len(), 1 << 20, "alive while a clone is");
        drop(clone);
        let again = POOL.take(1000);
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        // Grown when too small.
        drop(POOL.bytes(again));
        assert!(POOL.take(4 << 20).capacity() >= 4 << 20);
    }

    #[test]
    fn small_buffers_are_left_to_the_allocator_and_the_kept_ones_bounded() {
        static POOL: Pool = Pool::new();
        drop(POOL.bytes(POOL.take(100)));
        assert!(POOL.0.lock().unwrap().is_empty(), "not kept");
        let many: Vec<Bytes> = (0..MAX_KEPT + 8)
            .map(|_| POOL.bytes(POOL.take(1 << 20)))
            .collect();
        drop(many);
        let free = POOL.0.lock().unwrap();
        assert_eq!(free.len(), MAX_KEPT);
        assert!(free.iter().map(Vec::capacity).sum::<usize>() <= MAX_KEPT_BYTES);
    }
}
