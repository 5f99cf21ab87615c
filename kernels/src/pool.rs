//! A fixed pool of worker threads for data-parallel kernels.
//!
//! `run(n_tasks, f)` calls `f(t)` once for every `t < n_tasks`, spread over the
//! workers and the calling thread, and returns when all calls have finished.
//! Tasks are claimed from a shared counter, so which thread runs a task varies
//! from call to call: the kernels make each task's result independent of that.
//!
//! Protocol. `state` packs (epoch << 32) | OPEN | joined. The caller publishes
//! a job by writing it and storing a new epoch with OPEN set. A worker that sees
//! the new epoch joins with a compare-and-swap that increments `joined` while
//! OPEN is still set, runs tasks until none is left, then increments `left`.
//! When the caller has run out of tasks it clears OPEN (no one can join any
//! more) and waits until `left` equals the number that joined. A worker that
//! was not scheduled in time simply skips the job, so the caller never waits
//! for a thread that is not running (which matters on a loaded machine).
//!
//! Idle threads spin for a short while, then sleep on a condition variable. A
//! sleeper and its waker follow the same pattern on both sides: the sleeper
//! announces itself (SeqCst) and re-checks the condition under the lock, the
//! waker changes the condition (SeqCst) and then checks for sleepers, so one of
//! the two always sees the other.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable with the default number of threads.
pub const THREADS_ENV: &str = "FAASCALE_THREADS";

/// Upper bound on `FAASCALE_THREADS`, so a typo cannot spawn a hundred thousand threads.
pub const MAX_THREADS: usize = 1024;

/// How long an idle thread spins before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

type TaskFn = dyn Fn(usize) + Sync;
type Payload = Box<dyn Any + Send + 'static>;

/// The job being run: a type- and lifetime-erased `&TaskFn` and its task count.
#[derive(Clone, Copy)]
struct Job {
    f: *const TaskFn,
    n_tasks: usize,
}

/// Bit of `state` set while workers may join the current job.
const OPEN: u64 = 1 << 31;
/// Bits of `state` counting the workers that joined the current job.
const JOINED: u64 = OPEN - 1;

fn epoch_of(state: u64) -> u64 {
    state >> 32
}

struct Shared {
    /// Written by the caller before publishing a new epoch; read by workers
    /// that joined that epoch.
    job: UnsafeCell<Job>,
    /// (epoch << 32) | OPEN | joined; see the module documentation.
    state: AtomicU64,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Workers that joined the current job and have finished it.
    left: AtomicUsize,
    shutdown: AtomicBool,
    /// Workers asleep (or about to sleep) waiting for a job.
    idle_sleepers: AtomicUsize,
    /// Whether the caller sleeps (or is about to) waiting for `left`.
    caller_sleeps: AtomicBool,
    lock: Mutex<()>,
    job_cv: Condvar,
    done_cv: Condvar,
    /// First panic of the current job.
    panic: Mutex<Option<Payload>>,
}

// SAFETY: `job` is the only field that is not Sync by itself. It is written only
// by the thread holding `Pool::run_lock`, while no worker reads it (the previous
// job was closed and every worker that joined it has left), and read only by
// workers that joined the following epoch, whose publication they observed with
// Acquire ordering. The pointer inside is only dereferenced while `run` keeps
// the closure alive (it waits for every worker that joined).
unsafe impl Sync for Shared {}
// SAFETY: see above; the raw pointer is never used outside the job's lifetime.
unsafe impl Send for Shared {}

thread_local! {
    /// Id of the pool whose job this thread is currently running (0: none).
    static IN_POOL: Cell<usize> = const { Cell::new(0) };
}

/// A fixed-size pool of threads; the thread calling [`Pool::run`] takes part.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
    id: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while these locks are held, but stay usable if one did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A pool of `threads` threads in all, counting the caller of `run`
    /// (`threads - 1` workers are spawned; 0 is taken as 1). If the OS refuses
    /// a thread, the pool keeps the ones it got and says so on stderr.
    pub fn new(threads: usize) -> Pool {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(Job { f: std::ptr::null::<fn(usize)>() as *const TaskFn, n_tasks: 0 }),
            state: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            idle_sleepers: AtomicUsize::new(0),
            caller_sleeps: AtomicBool::new(false),
            lock: Mutex::new(()),
            job_cv: Condvar::new(),
            done_cv: Condvar::new(),
            panic: Mutex::new(None),
        });
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new().name(format!("kernels-{i}")).spawn(move || worker(&s, id)) {
                Ok(h) => workers.push(h),
                Err(e) => {
                    eprintln!("kernels: could not start pool thread {i}: {e}; using {i} threads");
                    break;
                }
            }
        }
        Pool { shared, workers, run_lock: Mutex::new(()), id }
    }

    /// `FAASCALE_THREADS` if set to a positive integer, else the available parallelism.
    /// `FAASCALE_THREADS` if set to 1..=MAX_THREADS, else every core.
    pub fn default_threads() -> usize {
        if let Ok(s) = std::env::var(THREADS_ENV) {
            match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => return n,
                _ => {
                    eprintln!("kernels: ignoring {THREADS_ENV}={s:?} (expected an integer in 1..={MAX_THREADS})")
                }
            }
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }

    /// A pool of [`Pool::default_threads`] threads.
    pub fn with_default_threads() -> Pool {
        Pool::new(Pool::default_threads())
    }

    /// Number of threads, counting the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(t)` exactly once for each `t` in `0..n_tasks` across the pool's
    /// threads and returns when every call has returned. Concurrent calls from
    /// different threads run one after the other; a call from inside a task of
    /// the same pool runs its tasks inline. If a task panics, the remaining
    /// tasks are skipped and the panic is resumed in the caller once all threads
    /// have left the job.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: &F) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 || IN_POOL.with(|p| p.get()) == self.id {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = lock(&self.run_lock);
        let s = &*self.shared;
        let f: &(dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: erasing the closure's lifetime is sound because this function
        // does not return (nor unwind) before the job is closed and every worker
        // that joined it has left, i.e. before anyone can still use the pointer.
        let f: *const TaskFn = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static TaskFn>(f) };
        // SAFETY: we hold run_lock and the previous job was closed with every
        // joined worker gone, so no one reads `job` now (see the Sync impl of Shared).
        unsafe { *s.job.get() = Job { f, n_tasks } };
        s.next.store(0, Relaxed);
        s.left.store(0, Relaxed);
        let epoch = epoch_of(s.state.load(Relaxed)) + 1;
        s.state.store(epoch << 32 | OPEN, SeqCst); // publishes job, next and left (Release part)
        if s.idle_sleepers.load(SeqCst) > 0 {
            let _g = lock(&s.lock);
            s.job_cv.notify_all();
        }
        let outer = IN_POOL.with(|p| p.replace(self.id));
        // SAFETY: the job was just published and stays valid until we return.
        unsafe { run_tasks(s) };
        IN_POOL.with(|p| p.set(outer));
        // Close the job: from here on no worker can join.
        let joined = (s.state.fetch_and(!OPEN, SeqCst) & JOINED) as usize;
        wait_workers(s, joined);
        if let Some(payload) = lock(&s.panic).take() {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, SeqCst);
        let epoch = epoch_of(s.state.load(SeqCst)) + 1;
        s.state.store(epoch << 32, SeqCst);
        {
            let _g = lock(&s.lock);
            s.job_cv.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Claims and runs tasks of the current job until none is left.
///
/// # Safety
/// The job in `s.job` must be published for this epoch and its closure alive.
unsafe fn run_tasks(s: &Shared) {
    // SAFETY: per the contract, `job` holds the current job and is not being written.
    let job = unsafe { *s.job.get() };
    // SAFETY: the closure outlives the job (the caller of run waits for us).
    let f = unsafe { &*job.f };
    loop {
        let t = s.next.fetch_add(1, Relaxed);
        if t >= job.n_tasks {
            return;
        }
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(t))) {
            s.next.store(job.n_tasks, Relaxed); // skip what is left
            lock(&s.panic).get_or_insert(payload);
        }
    }
}

/// Spins for up to SPIN until `ready()`; returns whether it became true.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > SPIN {
            return ready();
        }
    }
}

/// The caller's wait for the `joined` workers of the closed job to leave it.
fn wait_workers(s: &Shared, joined: usize) {
    if spin_until(|| s.left.load(Acquire) == joined) {
        return;
    }
    let mut g = lock(&s.lock);
    s.caller_sleeps.store(true, SeqCst);
    while s.left.load(SeqCst) != joined {
        g = s.done_cv.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    s.caller_sleeps.store(false, SeqCst);
}

/// Joins the job of `epoch` if it is still open.
fn try_join(s: &Shared, epoch: u64) -> bool {
    let mut cur = s.state.load(Acquire);
    while epoch_of(cur) == epoch && cur & OPEN != 0 {
        match s.state.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
    false
}

fn worker(s: &Shared, pool_id: usize) {
    IN_POOL.with(|p| p.set(pool_id));
    let mut seen = 0u64;
    loop {
        if !spin_until(|| epoch_of(s.state.load(Acquire)) != seen) {
            let mut g = lock(&s.lock);
            s.idle_sleepers.fetch_add(1, SeqCst);
            while epoch_of(s.state.load(SeqCst)) == seen {
                g = s.job_cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.idle_sleepers.fetch_sub(1, SeqCst);
        }
        if s.shutdown.load(Acquire) {
            return;
        }
        seen = epoch_of(s.state.load(Acquire));
        if !try_join(s, seen) {
            continue; // closed already: the caller did the work
        }
        // SAFETY: we joined this epoch's job (so it is published and the caller
        // waits for our `left` increment before the closure dies).
        unsafe { run_tasks(s) };
        s.left.fetch_add(1, SeqCst);
        if s.caller_sleeps.load(SeqCst) {
            let _g = lock(&s.lock);
            s.done_cv.notify_one();
        }
    }
}
