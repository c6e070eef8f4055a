//! Worker threads for requests that may block (`Exec`, `Mount`, ...),
//! shared by every connection.
//!
//! Threads are made before the server reports ready and are never ended
//! while it runs: in a guest, making a thread (clone, stack mapping, guard
//! page, first touches of its stack and malloc arena) costs many emulated
//! syscalls and page faults, so it happens once, before a template
//! snapshot, not per connection or per request. When every worker is busy
//! one more is made, up to a bound; it then stays too.
//!
//! Idle workers wait on a stack, and the most recently idle one takes the
//! next job: sequential requests keep running on the same warm thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use ttrpc::proto::{MessageHeader, Request};

use super::conn::{Conn, Methods, Replies};

/// One request for a worker.
pub struct Job {
    pub conn: Arc<Conn>,
    pub mh: MessageHeader,
    pub req: Request,
    /// The method's path, a key of the server's methods.
    pub path: String,
}

/// How the pool's threads are made.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Threads made up front.
    pub workers: usize,
    /// The most threads there will be.
    pub max_workers: usize,
    /// Each thread's stack size.
    pub stack_size: usize,
}

struct Idle {
    /// Each idle worker's wake-up; the last one waits least long.
    wakers: Vec<Arc<Condvar>>,
}

struct State {
    jobs: VecDeque<Job>,
    idle: Idle,
    threads: usize,
    stop: bool,
}

/// The pool; jobs go in with [`submit`](Self::submit).
pub struct Pool {
    state: Mutex<State>,
    methods: Arc<Methods>,
    config: PoolConfig,
}

impl Pool {
    /// Makes the pool and its first `config.workers` threads, each with a
    /// warm stack; fails if one cannot be made.
    pub fn start(methods: Arc<Methods>, config: PoolConfig) -> std::io::Result<Arc<Self>> {
        let pool = Arc::new(Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: Idle {
                    wakers: Vec::with_capacity(config.max_workers),
                },
                threads: 0,
                stop: false,
            }),
            methods,
            config,
        });
        for _ in 0..config.workers {
            pool.lock().threads += 1;
            if let Err(e) = Self::spawn(&pool) {
                pool.stop();
                return Err(e);
            }
        }
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only queue and counter updates happen under the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` and wakes an idle worker, or makes one if none is idle
    /// and the bound allows; otherwise the job waits for a busy one.
    pub fn submit(self: &Arc<Self>, job: Job) {
        let spawn = {
            let mut st = self.lock();
            st.jobs.push_back(job);
            if let Some(w) = st.idle.wakers.pop() {
                w.notify_one();
                false
            } else if st.threads < self.config.max_workers {
                st.threads += 1;
                true
            } else {
                false
            }
        };
        if spawn {
            if let Err(e) = Self::spawn(self) {
                crate::log::log(&format!(
                    "rpc worker thread: {e}; the job waits for a busy one"
                ));
            }
        }
    }

    /// Makes one worker (the caller counted it in `threads`).
    fn spawn(pool: &Arc<Self>) -> std::io::Result<()> {
        let p = Arc::clone(pool);
        let made = std::thread::Builder::new()
            .name("rpc-worker".into())
            .stack_size(pool.config.stack_size)
            .spawn(move || p.work());
        if let Err(e) = made {
            pool.lock().threads -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// Ends every worker once it is idle (a running job finishes first).
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        for w in st.idle.wakers.drain(..) {
            w.notify_one();
        }
    }

    fn work(&self) {
        super::warm_thread();
        let replies = Replies::new();
        let waker = Arc::new(Condvar::new());
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if let Some(job) = st.jobs.pop_front() {
                        break job;
                    }
                    st.idle.wakers.push(Arc::clone(&waker));
                    st = waker.wait(st).unwrap_or_else(PoisonError::into_inner);
                    // A spurious wake-up leaves us on the idle stack.
                    st.idle.wakers.retain(|w| !Arc::ptr_eq(w, &waker));
                }
            };
            if let Some(method) = self.methods.get(&job.path) {
                replies.handle(&job.conn, job.mh, method.as_ref(), job.req);
            }
        }
    }

    /// Threads made so far.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.lock().threads
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::collections::HashMap;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use ttrpc::proto::{Code, ResponseInit};
    use ttrpc::{MethodHandler, Response, TtrpcContext};

    use super::*;

    /// Answers once a token arrives on its channel.
    struct Gate(Mutex<mpsc::Receiver<()>>);

    impl MethodHandler for Gate {
        fn handler(&self, ctx: TtrpcContext, _: Request) -> ttrpc::Result<()> {
            let _ = self.0.lock().unwrap().recv();
            let res = Response::init_status(ttrpc::get_status(Code::OK, String::new()));
            ctx.respond(ctx.mh.stream_id, res)
        }
    }

    fn pool(max_workers: usize) -> (Arc<Pool>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        let mut methods: Methods = HashMap::new();
        methods.insert("/t.S/Gate".into(), Box::new(Gate(Mutex::new(rx))));
        let config = PoolConfig {
            workers: 1,
            max_workers,
            stack_size: 256 * 1024,
        };
        (Pool::start(Arc::new(methods), config).unwrap(), tx)
    }

    fn job(conn: &Arc<Conn>, stream_id: u32) -> Job {
        Job {
            conn: Arc::clone(conn),
            mh: MessageHeader::new_request(stream_id, 0),
            req: Request::default(),
            path: "/t.S/Gate".into(),
        }
    }

    /// Reads `n` reply frames from `peer`; returns their stream ids.
    fn replies(peer: &mut UnixStream, n: usize) -> Vec<u32> {
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut h = [0u8; 10];
            peer.read_exact(&mut h).unwrap();
            let mh = MessageHeader::from(&h[..]);
            let mut body = vec![0u8; mh.length as usize];
            peer.read_exact(&mut body).unwrap();
            ids.push(mh.stream_id);
        }
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_blocked_job_gets_a_new_worker_up_to_the_bound() {
        let (pool, gate) = pool(3);
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (conn, _cancel) = Conn::new(ours.into());
        assert_eq!(pool.threads(), 1, "made up front");
        for id in [1, 3, 5, 7, 9] {
            pool.submit(job(&conn, id));
        }
        // Three workers block in the gate; two jobs wait in the queue.
        assert_eq!(pool.threads(), 3);
        for _ in 0..5 {
            gate.send(()).unwrap();
        }
        assert_eq!(replies(&mut peer, 5), [1, 3, 5, 7, 9]);
        assert_eq!(pool.threads(), 3, "workers stay");
        pool.stop();
    }

    #[test]
    fn sequential_jobs_reuse_the_warm_worker() {
        let (pool, gate) = pool(4);
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (conn, _cancel) = Conn::new(ours.into());
        for id in 0..20u32 {
            gate.send(()).unwrap();
            pool.submit(job(&conn, 2 * id + 1));
            assert_eq!(replies(&mut peer, 1), [2 * id + 1]);
        }
        // A reply leaves before its worker is idle again, so the next job
        // may find none idle once in a while; it never takes one per job.
        assert!(pool.threads() <= 4, "{}", pool.threads());
        pool.stop();
    }
}
