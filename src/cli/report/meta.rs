//! What the report says about the run itself: machine, date, settings, the GEMM ceiling.

use attnkit::DType;
use attnkit::bench::GemmCeiling;
use attnkit::bench::record::serialize_display;
use attnkit::inputs::InputFamily;
use serde::{Serialize, Serializer};

#[derive(Serialize)]
pub struct Meta {
    pub command: String,
    pub date_utc: String,
    pub cpu: String,
    pub cores: usize,
    pub threads: usize,
    pub quick: bool,
    /// `None` when no CPU cell ran, so the ceiling was never needed.
    pub gemm: Option<GemmCeiling>,
    pub dim: usize,
    pub heads: usize,
    pub batch: usize,
    pub dtype: DType,
    pub seed: u64,
    /// The sweep's input family.
    #[serde(serialize_with = "serialize_display")]
    pub inputs: InputFamily,
    /// The families the accuracy–speed frontier runs on.
    #[serde(serialize_with = "family_names")]
    pub families: Vec<InputFamily>,
    pub reps: usize,
    pub run_budget_s: f64,
    pub oracle_max_n: usize,
    pub mem_budget_bytes: u64,
    pub elapsed_s: f64,
    /// The 1-minute load average when each part of the run started (Linux only; empty
    /// elsewhere): above `threads`, other processes competed for the cores during the part.
    pub load: Vec<LoadSample>,
    pub unavailable: Vec<String>,
}

/// One reading of the system's 1-minute load average.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSample {
    /// The part of the run about to start (`sweep`, `decode`, …, `end`).
    pub at: &'static str,
    pub load1: f64,
}

/// Appends the current 1-minute load average (from /proc/loadavg) as `at`, when readable.
pub fn sample_load(samples: &mut Vec<LoadSample>, at: &'static str) {
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()));
    if let Some(load1) = load1 {
        samples.push(LoadSample { at, load1 });
    }
}

fn family_names<S: Serializer>(fs: &[InputFamily], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(fs.iter().map(|f| f.to_string()))
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no /proc/cpuinfo model name)".into())
}

/// Now, in UTC, from the system clock.
pub fn utc_date() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    utc_date_of(secs)
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (civil-from-days after Howard Hinnant, no date crate).
pub fn utc_date_of(unix_secs: i64) -> String {
    let (days, rem) = (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_date_of_known_instants() {
        assert_eq!(utc_date_of(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 (a leap day of a century leap year) 12:34.
        assert_eq!(utc_date_of(951_827_640), "2000-02-29 12:34 UTC");
        // 2100-03-01 00:00: 2100 is not a leap year.
        assert_eq!(utc_date_of(4_107_542_400), "2100-03-01 00:00 UTC");
        assert_eq!(utc_date_of(-1), "1969-12-31 23:59 UTC");
        let now = utc_date();
        assert!(now.len() == 20 && now.ends_with("UTC") && now.starts_with("20"), "{now}");
    }
}
