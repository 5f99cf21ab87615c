//! A fixed pool of worker threads for data-parallel kernels.
//!
//! `run(n_tasks, f)` calls `f(t)` once for every `t < n_tasks`, spread over the
//! workers and the calling thread, and returns when all calls have finished.
//! Tasks are claimed from a shared counter, so which thread runs a task varies
//! from call to call: the kernels make each task's result independent of that.
//!
//! Synchronisation: the caller publishes the job, then bumps `epoch`; workers
//! spin on `epoch` for a short while and then sleep on a condition variable.
//! The caller waits for `pending` (workers still inside the job) to reach zero
//! the same way. A sleeper and its waker follow the same pattern on both sides:
//! the sleeper announces itself (SeqCst) and re-checks the condition under the
//! lock, the waker changes the condition (SeqCst) and then checks for sleepers,
//! so one of the two always sees the other.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable with the default number of threads.
pub const THREADS_ENV: &str = "FAASCALE_THREADS";

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

struct Shared {
    /// Written by the caller before bumping `epoch`; read by workers after seeing the bump.
    job: UnsafeCell<Job>,
    /// Incremented once per job (and at shutdown).
    epoch: AtomicU64,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    shutdown: AtomicBool,
    /// Workers asleep (or about to sleep) waiting for a job.
    idle_sleepers: AtomicUsize,
    /// Whether the caller sleeps (or is about to) waiting for `pending == 0`.
    caller_sleeps: AtomicBool,
    lock: Mutex<()>,
    job_cv: Condvar,
    done_cv: Condvar,
    /// First panic of the current job.
    panic: Mutex<Option<Payload>>,
}

// SAFETY: `job` is the only field that is not Sync by itself. It is written only
// by the thread holding `Pool::run_lock`, while no worker reads it (every worker
// has finished the previous job: `pending` was 0), and read by workers only after
// they observe the following `epoch` increment with Acquire ordering. The pointer
// inside is only dereferenced while `run` keeps the closure alive.
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
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
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
    pub fn default_threads() -> usize {
        if let Ok(s) = std::env::var(THREADS_ENV) {
            match s.trim().parse::<usize>() {
                Ok(n) if n >= 1 => return n,
                _ => eprintln!("kernels: ignoring {THREADS_ENV}={s:?} (expected a positive integer)"),
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
        // does not return (nor unwind) before `pending` is 0, i.e. before every
        // worker has stopped using the pointer; see wait_workers below.
        let f: *const TaskFn = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static TaskFn>(f) };
        // SAFETY: we hold run_lock and the previous job ended with pending == 0,
        // so no worker reads `job` now (see the Sync impl of Shared).
        unsafe { *s.job.get() = Job { f, n_tasks } };
        s.next.store(0, Relaxed);
        s.pending.store(self.workers.len(), Relaxed);
        s.epoch.fetch_add(1, SeqCst); // publishes job, next and pending (Release part)
        if s.idle_sleepers.load(SeqCst) > 0 {
            let _g = lock(&s.lock);
            s.job_cv.notify_all();
        }
        let outer = IN_POOL.with(|p| p.replace(self.id));
        // SAFETY: the job was just published and stays valid until we return.
        unsafe { run_tasks(s) };
        IN_POOL.with(|p| p.set(outer));
        wait_workers(s);
        if let Some(payload) = lock(&s.panic).take() {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
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

/// The caller's wait for every worker to leave the current job.
fn wait_workers(s: &Shared) {
    if spin_until(|| s.pending.load(Acquire) == 0) {
        return;
    }
    let mut g = lock(&s.lock);
    s.caller_sleeps.store(true, SeqCst);
    while s.pending.load(SeqCst) != 0 {
        g = s.done_cv.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    s.caller_sleeps.store(false, SeqCst);
}

fn worker(s: &Shared, pool_id: usize) {
    IN_POOL.with(|p| p.set(pool_id));
    let mut seen = 0u64;
    loop {
        if !spin_until(|| s.epoch.load(Acquire) != seen) {
            let mut g = lock(&s.lock);
            s.idle_sleepers.fetch_add(1, SeqCst);
            while s.epoch.load(SeqCst) == seen {
                g = s.job_cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.idle_sleepers.fetch_sub(1, SeqCst);
        }
        seen = s.epoch.load(Acquire);
        if s.shutdown.load(Acquire) {
            return;
        }
        // SAFETY: we observed the epoch bump that published this job, and the
        // caller waits for our `pending` decrement before the closure dies.
        unsafe { run_tasks(s) };
        if s.pending.fetch_sub(1, SeqCst) == 1 && s.caller_sleeps.load(SeqCst) {
            let _g = lock(&s.lock);
            s.done_cv.notify_one();
        }
    }
}
