//! Which burn backend runs: CPU (`flex`) always; CUDA when built with the `cuda` feature
//! and a driver with at least one device is present. The choice is provenance: results
//! do not depend on it beyond floating-point noise, so it is not part of any cache key.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA if this build has it and a GPU is present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// What actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBackend {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

impl ResolvedBackend {
    pub fn name(self) -> &'static str {
        match self {
            ResolvedBackend::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            ResolvedBackend::Cuda => "cuda",
        }
    }
    /// Human description for provenance: backend, device, threads.
    pub fn describe(self) -> String {
        match self {
            ResolvedBackend::Cpu => format!("burn-flex cpu, {} threads", rayon::current_num_threads()),
            #[cfg(feature = "cuda")]
            ResolvedBackend::Cuda => "burn-cuda, device 0".to_string(),
        }
    }
}

impl BackendChoice {
    pub fn resolve(self) -> Result<ResolvedBackend> {
        match self {
            BackendChoice::Cpu => Ok(ResolvedBackend::Cpu),
            BackendChoice::Auto => {
                #[cfg(feature = "cuda")]
                if cuda_available() {
                    return Ok(ResolvedBackend::Cuda);
                }
                Ok(ResolvedBackend::Cpu)
            }
            BackendChoice::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    if cuda_available() {
                        Ok(ResolvedBackend::Cuda)
                    } else {
                        Err(ModelError::Backend("backend \"cuda\": no CUDA driver or device found (libcuda.so.1)".into()))
                    }
                }
                #[cfg(not(feature = "cuda"))]
                Err(ModelError::Backend(
                    "backend \"cuda\": this build has no CUDA backend; rebuild with `--features cuda`".into(),
                ))
            }
        }
    }
}

/// Probe the driver without burn: burn-cuda panics when it cannot create a device, so we
/// dlopen libcuda ourselves, `cuInit(0)` and ask for the device count. Cached per process.
pub fn cuda_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(probe_cuda)
}

fn probe_cuda() -> bool {
    #[cfg(unix)]
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return false;
        }
        let init = libc::dlsym(lib, c"cuInit".as_ptr());
        let count = libc::dlsym(lib, c"cuDeviceGetCount".as_ptr());
        if init.is_null() || count.is_null() {
            return false;
        }
        let init: extern "C" fn(u32) -> i32 = std::mem::transmute(init);
        let count: extern "C" fn(*mut i32) -> i32 = std::mem::transmute(count);
        if init(0) != 0 {
            return false;
        }
        let mut n = 0i32;
        // The library stays loaded: burn-cuda opens the same one right after.
        count(&mut n) == 0 && n > 0
    }
    #[cfg(not(unix))]
    false
}

/// Run generic code on the resolved backend. Closures cannot be generic, so the work is a
/// type implementing one of these traits.
pub trait TrainTask {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend + crate::ModelBackend>(self, device: B::Device, backend: ResolvedBackend) -> Self::Output
    where
        B::InnerBackend: crate::ModelBackend;
}

pub trait InferTask {
    type Output;
    fn run<B: crate::ModelBackend>(self, device: B::Device) -> Self::Output;
}

pub fn run_train<T: TrainTask>(backend: ResolvedBackend, task: T) -> T::Output {
    use burn::backend::{Autodiff, Flex};
    match backend {
        ResolvedBackend::Cpu => task.run::<Autodiff<Flex>>(Default::default(), backend),
        #[cfg(feature = "cuda")]
        ResolvedBackend::Cuda => task.run::<Autodiff<burn::backend::Cuda>>(Default::default(), backend),
    }
}

pub fn run_infer<T: InferTask>(backend: ResolvedBackend, task: T) -> T::Output {
    use burn::backend::Flex;
    match backend {
        ResolvedBackend::Cpu => task.run::<Flex>(Default::default()),
        #[cfg(feature = "cuda")]
        ResolvedBackend::Cuda => task.run::<burn::backend::Cuda>(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_resolve_without_a_gpu_build() {
        assert_eq!(BackendChoice::Cpu.resolve().unwrap(), ResolvedBackend::Cpu);
        #[cfg(not(feature = "cuda"))]
        {
            assert_eq!(BackendChoice::Auto.resolve().unwrap(), ResolvedBackend::Cpu);
            let err = BackendChoice::Cuda.resolve().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        let parsed: BackendChoice = serde_json::from_str("\"cuda\"").unwrap();
        assert_eq!(parsed, BackendChoice::Cuda);
    }
}
