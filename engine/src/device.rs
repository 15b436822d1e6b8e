//! Where a tensor's storage lives. The CPU today; the CUDA backend adds `Cuda(ordinal)`.

/// A compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
}

impl Device {
    /// The best available device, overridable with `FLAMINGO_DEVICE=cpu|cuda`.
    /// Only the CPU backend exists so far, so asking for CUDA explains that and falls back.
    pub fn best() -> Device {
        match std::env::var("FLAMINGO_DEVICE").ok().as_deref() {
            Some("cuda") => {
                eprintln!("flamingo: FLAMINGO_DEVICE=cuda requested, but this build has no CUDA backend yet; using the CPU");
                Device::Cpu
            }
            _ => Device::Cpu,
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
