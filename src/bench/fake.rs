//! A configurable stand-in backend for the bench unit tests: a chosen device, output value,
//! working set and device timer, so the runner's branches can be driven without a GPU or a bug.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::{AttnError, Result};
use crate::problem::Problem;

pub(crate) struct Fake {
    pub device: Device,
    /// Every output element is set to this (NaN to play a broken kernel).
    pub fill: f32,
    pub device_times: Option<std::result::Result<Vec<f64>, String>>,
    pub working: Option<u64>,
}

impl Fake {
    pub fn cpu() -> Self {
        Fake { device: Device::Cpu, fill: 0.5, device_times: None, working: Some(0) }
    }

    pub fn cuda(device_times: Option<std::result::Result<Vec<f64>, String>>) -> Self {
        Fake { device: Device::Cuda, device_times, ..Fake::cpu() }
    }
}

impl Attention for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn device(&self) -> Device {
        self.device
    }
    fn not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    fn working_bytes(&self, _problem: &Problem) -> Option<u64> {
        self.working
    }
    fn compute(&self, _args: &AttnArgs<'_>, out: &mut [f32], _lse: Option<&mut [f32]>) -> Result<()> {
        out.fill(self.fill);
        Ok(())
    }
    fn time_on_device(&self, _problem: &Problem, _reps: usize) -> Option<Result<Vec<f64>>> {
        self.device_times.clone().map(|r| r.map_err(AttnError::Cuda))
    }
}
