//! The memory allocator: jemalloc with a single arena and small thread
//! caches, for every program built from this crate (`plusmoin`, the tests,
//! the benches).
//!
//! plusmoin's memory is mostly many small, equal pieces per server (a
//! connection's read and write buffers, its task, its statements) and
//! short-lived ones per probe. At 1,000 simulated servers
//! (`benches/scale.rs`, resident memory half a minute after the measured
//! beats), glibc's malloc held 32-33 MB; jemalloc with its defaults about
//! 30.5 MB; with one arena about 29.5 MB; with one arena and thread caches
//! kept to pieces of 1 KB or less, 28.3-28.8 MB; CPU per beat stayed
//! within the bench's run-to-run spread throughout. One arena suffices:
//! the runtime has two worker threads, and each thread's cache serves its
//! small allocations without taking the arena's lock.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (a C string: the
/// `MALLOC_CONF` environment variable, prefixed `_RJEM_` here, still
/// overrides it for experiments).
#[export_name = "_rjem_malloc_conf"]
#[used]
static MALLOC_CONF: Conf = Conf(c"narenas:1,tcache_max:1024".as_ptr());

/// A C string pointer, as jemalloc declares `malloc_conf`.
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: it points to a constant, never written.
unsafe impl Sync for Conf {}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" {
        // jemalloc's own, under the prefix tikv-jemalloc-sys gives it.
        fn _rjem_mallctl(
            name: *const c_char,
            oldp: *mut c_void,
            oldlenp: *mut usize,
            newp: *mut c_void,
            newlen: usize,
        ) -> c_int;
    }

    /// jemalloc's option `name`, of type `T`.
    fn opt<T: Default>(name: &std::ffi::CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is of the option's type, `len` its size.
        let rc = unsafe {
            _rjem_mallctl(
                name.as_ptr(),
                (&mut value as *mut T).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "mallctl {name:?} failed");
        value
    }

    /// The options are under a symbol name of the jemalloc crate's
    /// choosing: should it change, they would be silently ignored.
    #[test]
    fn jemalloc_runs_with_our_options() {
        assert_eq!(opt::<u32>(c"opt.narenas"), 1);
        assert_eq!(opt::<usize>(c"opt.tcache_max"), 1024);
    }
}
