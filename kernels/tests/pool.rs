//! The thread pool: every task once, borrowing, serialised concurrent runs,
//! nested runs, panics propagated without deadlock.
use kernels::Pool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn runs_every_task_exactly_once() {
    for threads in [1, 2, 3, 5] {
        let pool = Pool::new(threads);
        assert_eq!(pool.threads(), threads);
        for n in [0, 1, 2, 3, 7, 100, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "threads={threads} n={n}");
        }
    }
}

#[test]
fn many_back_to_back_runs() {
    let pool = Pool::new(3);
    let total = AtomicUsize::new(0);
    for i in 0..20_000 {
        pool.run(1 + i % 5, &|t| {
            total.fetch_add(t + 1, Ordering::Relaxed);
        });
    }
    let want: usize = (0..20_000).map(|i| (1..=1 + i % 5).sum::<usize>()).sum();
    assert_eq!(total.load(Ordering::Relaxed), want);
}

#[test]
fn idle_workers_wake_up() {
    let pool = Pool::new(2);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(20)); // workers go to sleep
        let hits = AtomicUsize::new(0);
        pool.run(64, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 64);
    }
}

#[test]
fn concurrent_runs_from_several_threads() {
    let pool = Arc::new(Pool::new(3));
    let handles: Vec<_> = (0..4)
        .map(|id| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                for round in 0..500 {
                    let n = 1 + (id + round) % 9;
                    let mut out = vec![0usize; n];
                    let ptr = out.as_mut_ptr() as usize;
                    pool.run(n, &|t| {
                        // SAFETY: each task writes its own element of `out`, which outlives run.
                        unsafe { *(ptr as *mut usize).add(t) = t * id };
                    });
                    assert!(out.iter().enumerate().all(|(t, &v)| v == t * id));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn nested_run_on_same_pool_runs_inline() {
    let pool = Pool::new(2);
    let hits = AtomicUsize::new(0);
    pool.run(4, &|_| {
        pool.run(3, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(hits.load(Ordering::Relaxed), 12);
}

#[test]
fn panic_in_task_reaches_caller_and_pool_survives() {
    for threads in [1, 2, 3] {
        let pool = Pool::new(threads);
        for bad in [0, 5, 63] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(64, &|t| {
                    if t == bad {
                        panic!("task {t} failed");
                    }
                });
            }));
            let msg = r.unwrap_err();
            assert_eq!(msg.downcast_ref::<String>().map(String::as_str), Some(&*format!("task {bad} failed")));
        }
        let hits = AtomicUsize::new(0);
        pool.run(10, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 10);
    }
}

#[test]
fn default_threads_is_positive() {
    assert!(Pool::default_threads() >= 1);
    assert_eq!(Pool::new(0).threads(), 1);
}
