//! The MPI [`Transport`] (feature `mpi`, rsmpi over the system's MPI, e.g. OpenMPI).
//!
//! A shift posts `MPI_Irecv` from rank−1 and `MPI_Isend` to rank+1, runs the work on a scoped
//! thread while polling both requests (`MPI_Test`, every 0.2 ms) so the transfer progresses
//! behind the compute, and waits on what is left; the all-gather is `MPI_Allgatherv`. MPI calls come from the calling thread only
//! (rayon's compute threads never touch MPI), so `MPI_THREAD_FUNNELED` suffices.
//!
//! Failure: an error on one rank leaves its peers blocked in a transfer, so a caller that
//! cannot go on must call [`MpiRing::abort`] (MPI_Abort on the world), which ends every rank
//! with a non-zero status; a rank that exits without finalizing makes `mpirun` end the job.
//! Caveat: MPI counts are C ints, so one message holds at most 2³¹−1 elements (checked).

use super::ring::Transport;
use crate::error::{AttnError, Result};
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::time::Instant;

/// This process's rank in `MPI_COMM_WORLD`.
pub struct MpiRing {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
}

impl MpiRing {
    /// Wraps a communicator (normally `universe.world()`).
    pub fn new(world: SimpleCommunicator) -> Self {
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        MpiRing { world, rank, size }
    }

    /// Ends every rank of the job with `code` (MPI_Abort); for an error this rank cannot
    /// recover from, so that no peer waits forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// A barrier (so timings start together).
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// A barrier that sleeps between polls, so ranks waiting for rank 0's single-process
    /// baseline do not busy-spin on the cores it is timed on.
    pub fn quiet_barrier(&self) {
        let mut req = self.world.immediate_barrier();
        loop {
            match req.test() {
                Ok(_) => return,
                Err(r) => {
                    req = r;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
    }

    /// Gathers variable-length pieces to rank 0 (others get an empty vector).
    pub fn gather_to_root(&self, mine: &[f32], lens: &[usize]) -> Result<Vec<f32>> {
        // Every rank takes part; rank 0 keeps the result. All-gather keeps this short and the
        // sizes here are small (results for --check).
        let all = self.all_gather(mine, lens)?;
        Ok(if self.rank == 0 { all } else { Vec::new() })
    }
}

fn count(n: usize, rank: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        AttnError::shape(format!("rank {rank}: a message of {n} elements exceeds MPI's count limit of 2^31−1"))
    })
}

impl Transport for MpiRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn shift<R: Send>(&self, send: &[f32], recv: &mut [f32], work: impl FnOnce() -> R + Send) -> Result<(R, f64)> {
        count(send.len().max(recv.len()), self.rank)?;
        let next = ((self.rank + 1) % self.size) as i32;
        let prev = ((self.rank + self.size - 1) % self.size) as i32;
        Ok(mpi::request::scope(|scope| {
            let mut rreq = Some(self.world.process_at_rank(prev).immediate_receive_into(scope, recv));
            let mut sreq = Some(self.world.process_at_rank(next).immediate_send(scope, send));
            // The work runs on its own thread while this one, the only one calling MPI, polls
            // the requests: OpenMPI moves a large (rendezvous) message only inside MPI calls,
            // so without polling the transfer would happen in the wait, not behind the compute.
            std::thread::scope(|ts| {
                let worker = ts.spawn(work);
                while !worker.is_finished() && (rreq.is_some() || sreq.is_some()) {
                    rreq = rreq.take().and_then(|r| r.test().err());
                    sreq = sreq.take().and_then(|r| r.test().err());
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                let r = worker.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                let t = Instant::now();
                if let Some(q) = rreq {
                    q.wait_without_status();
                }
                if let Some(q) = sreq {
                    q.wait_without_status();
                }
                (r, t.elapsed().as_secs_f64())
            })
        }))
    }
    fn all_gather(&self, mine: &[f32], lens: &[usize]) -> Result<Vec<f32>> {
        count(lens.iter().sum(), self.rank)?;
        let counts: Vec<i32> = lens.iter().map(|&n| n as i32).collect();
        let displs: Vec<i32> = counts.iter().scan(0, |a, &n| Some(std::mem::replace(a, *a + n))).collect();
        let mut all = vec![0.0f32; lens.iter().sum()];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        Ok(all)
    }
}
