//! A [`Transport`] between threads of one process: the ring's exact algorithm without MPI, for
//! tests in the default build and for trying the ring on one machine.
//!
//! Each rank is a thread with a channel to rank+1; a shift sends a copy of the buffer (the
//! channel is unbounded, so the send never blocks), runs the work, then receives. The
//! all-gather passes every rank's piece P−1 steps around the same ring.

use super::ring::Transport;
use crate::error::{AttnError, Result};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

/// One rank of an in-process ring.
pub struct ThreadRing {
    rank: usize,
    size: usize,
    to_next: Sender<Vec<f32>>,
    from_prev: Receiver<Vec<f32>>,
}

impl ThreadRing {
    /// Runs `f` on `ranks` threads, one per rank, and returns their results in rank order.
    pub fn run<R: Send>(ranks: usize, f: impl Fn(&ThreadRing) -> R + Sync) -> Vec<R> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..ranks).map(|_| channel::<Vec<f32>>()).unzip();
        // Rank r sends on the channel rank r+1 receives from.
        let mut rings: Vec<ThreadRing> = rxs
            .into_iter()
            .enumerate()
            .map(|(r, rx)| ThreadRing { rank: r, size: ranks, to_next: txs[(r + 1) % ranks].clone(), from_prev: rx })
            .collect();
        drop(txs);
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = rings.drain(..).map(|ring| s.spawn(move || f(&ring))).collect();
            handles.into_iter().map(|h| h.join().expect("a ring thread panicked")).collect()
        })
    }

    fn recv_exact(&self, n: usize) -> Result<Vec<f32>> {
        let got = self
            .from_prev
            .recv()
            .map_err(|_| AttnError::invalid(format!("rank {}: rank {} left the ring", self.rank, self.prev())))?;
        if got.len() != n {
            return Err(AttnError::shape(format!(
                "rank {}: expected {n} elements from rank {}, got {}",
                self.rank,
                self.prev(),
                got.len()
            )));
        }
        Ok(got)
    }

    fn prev(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    fn send(&self, data: Vec<f32>) -> Result<()> {
        self.to_next.send(data).map_err(|_| {
            AttnError::invalid(format!("rank {}: rank {} left the ring", self.rank, (self.rank + 1) % self.size))
        })
    }
}

impl Transport for ThreadRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn shift<R: Send>(&self, send: &[f32], recv: &mut [f32], work: impl FnOnce() -> R + Send) -> Result<(R, f64)> {
        self.send(send.to_vec())?;
        let r = work();
        let t = Instant::now();
        recv.copy_from_slice(&self.recv_exact(recv.len())?);
        Ok((r, t.elapsed().as_secs_f64()))
    }
    fn all_gather(&self, mine: &[f32], lens: &[usize]) -> Result<Vec<f32>> {
        let at: Vec<usize> = lens.iter().scan(0, |a, &n| Some(std::mem::replace(a, *a + n))).collect();
        let mut all = vec![0.0f32; lens.iter().sum()];
        let r = self.rank;
        all[at[r]..at[r] + mine.len()].copy_from_slice(mine);
        // Step s forwards the piece of rank r−s and receives that of rank r−s−1.
        for s in 0..self.size - 1 {
            let (out_of, into) = ((r + self.size - s) % self.size, (r + 2 * self.size - s - 1) % self.size);
            self.send(all[at[out_of]..at[out_of] + lens[out_of]].to_vec())?;
            let got = self.recv_exact(lens[into])?;
            all[at[into]..at[into] + lens[into]].copy_from_slice(&got);
        }
        Ok(all)
    }
}
