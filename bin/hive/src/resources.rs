//! Real readings of this machine: CPU, memory, disk, load average.

use std::path::Path;

use contract::{LoadAverage, Resources};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Keeps the `sysinfo` state between readings: CPU usage is the difference between two
/// refreshes, so the first reading after start says 0 % and the later ones are real.
pub struct Sampler {
    system: System,
    disks: Disks,
}

impl Sampler {
    pub fn new() -> Result<Self, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )?;
        Ok(Self { system, disks: Disks::new_with_refreshed_list()? })
    }

    pub fn sample(&mut self) -> Resources {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg { one: 0.0, five: 0.0, fifteen: 0.0 });
        // The disk that holds `/` is the one whose filling up stops the machine; a sum
        // over all mounts would count bind mounts and overlays twice.
        let (disk_total, disk_available) = self
            .disks
            .iter()
            .find(|d| d.mount_point() == Path::new("/"))
            .or_else(|| self.disks.iter().max_by_key(|d| d.total_space()))
            .map(|d| (d.total_space(), d.available_space()))
            .unwrap_or((0, 0));
        let memory_total = self.system.total_memory();
        Resources {
            cpu_percent: self.system.global_cpu_usage().clamp(0.0, 100.0),
            memory_used_bytes: self.system.used_memory().min(memory_total),
            memory_total_bytes: memory_total,
            disk_used_bytes: disk_total.saturating_sub(disk_available),
            disk_total_bytes: disk_total,
            load_average: LoadAverage { one: load.one, five: load.five, fifteen: load.fifteen },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_real_and_consistent() {
        let mut sampler = Sampler::new().expect("sysinfo works on linux");
        let first = sampler.sample();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let r = sampler.sample();
        assert!(r.memory_total_bytes > 0, "this machine has memory: {first:?}");
        assert!(r.memory_used_bytes > 0 && r.memory_used_bytes <= r.memory_total_bytes);
        assert!(r.disk_total_bytes > 0, "this machine has a disk");
        assert!((0.0..=100.0).contains(&r.cpu_percent));
        assert!(r.load_average.one >= 0.0);
    }
}
