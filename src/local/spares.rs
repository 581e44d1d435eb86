//! Warm pools of what a create needs and the kernel takes a while to make (a mounted disk, a
//! configured network namespace): a background thread makes a few ahead of time, a create
//! takes one and the pool makes another. What a pool holds is owned by the backend alone
//! (descriptors, files that recovery removes after a crash), so a pool never leaks anything
//! a stop would not free.

use std::io;
use std::sync::{Arc, Mutex};

use super::fault::lock;

type Make<T> = Box<dyn Fn() -> io::Result<T> + Send + Sync>;

/// A warm pool of `T`s.
pub(crate) struct Spares<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    name: &'static str,
    want: usize,
    ready: Mutex<Vec<T>>,
    /// Whether a thread is making spares now.
    filling: Mutex<bool>,
    make: Make<T>,
}

impl<T> std::fmt::Debug for Spares<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares")
            .field("name", &self.inner.name)
            .field("ready", &lock(&self.inner.ready).len())
            .finish()
    }
}

impl<T: Send + 'static> Spares<T> {
    /// A pool that keeps `want` spares made by `make` (on a thread named `name`), empty until
    /// the first [`take`](Self::take).
    pub(crate) fn new(
        name: &'static str,
        want: usize,
        make: impl Fn() -> io::Result<T> + Send + Sync + 'static,
    ) -> Spares<T> {
        Spares {
            inner: Arc::new(Inner {
                name,
                want,
                ready: Mutex::new(Vec::new()),
                filling: Mutex::new(false),
                make: Box::new(make),
            }),
        }
    }

    /// A spare if one is ready; either way the pool is refilled in the background.
    pub(crate) fn take(&self) -> Option<T> {
        let spare = lock(&self.inner.ready).pop();
        self.refill();
        spare
    }

    /// Starts the thread that makes spares until there are enough, unless it runs already.
    fn refill(&self) {
        {
            let mut filling = lock(&self.inner.filling);
            if *filling || lock(&self.inner.ready).len() >= self.inner.want {
                return;
            }
            *filling = true;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(self.inner.name.into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                let made = (inner.make)();
                let mut filling = lock(&inner.filling);
                match made {
                    Ok(spare) => {
                        let mut ready = lock(&inner.ready);
                        ready.push(spare);
                        if ready.len() < inner.want {
                            continue;
                        }
                    }
                    // a create without a spare makes its own (and reports what fails)
                    Err(e) => tracing::debug!(pool = inner.name, "cannot make a spare: {e}"),
                }
                *filling = false;
                return;
            });
        if spawned.is_err() {
            *lock(&self.inner.filling) = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_taken_spare_is_replaced_in_the_background() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let pool = Spares::new("test-spares", 2, move || {
            Ok(m.fetch_add(1, Ordering::SeqCst))
        });
        assert_eq!(pool.take(), None, "the pool starts empty");
        let mut ready = 0;
        for _ in 0..500 {
            ready = lock(&pool.inner.ready).len();
            if ready == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(ready, 2, "the pool fills to what it keeps");
        let first = pool.take().expect("a spare is ready");
        assert!(first < 2, "spares come from the maker");
        for _ in 0..500 {
            if made.load(Ordering::SeqCst) == 3 && lock(&pool.inner.ready).len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(made.load(Ordering::SeqCst), 3, "one more made, no more");
        assert_eq!(lock(&pool.inner.ready).len(), 2);
    }

    #[test]
    fn a_failing_maker_leaves_the_pool_empty_and_usable() {
        let pool: Spares<u32> = Spares::new("test-spares", 2, || Err(io::Error::other("no")));
        assert_eq!(pool.take(), None);
        for _ in 0..500 {
            if !*lock(&pool.inner.filling) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!*lock(&pool.inner.filling), "the thread gave up");
        assert_eq!(pool.take(), None);
    }
}
