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
        ResolvedBackend::Cuda => {
            configure_gpu_kernels();
            task.run::<Autodiff<burn::backend::Cuda>>(Default::default(), backend)
        }
    }
}

pub fn run_infer<T: InferTask>(backend: ResolvedBackend, task: T) -> T::Output {
    use burn::backend::Flex;
    match backend {
        ResolvedBackend::Cpu => task.run::<Flex>(Default::default()),
        #[cfg(feature = "cuda")]
        ResolvedBackend::Cuda => {
            configure_gpu_kernels();
            task.run::<burn::backend::Cuda>(Default::default())
        }
    }
}

static GPU_KERNEL_CACHE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Where a CUDA build keeps compiled kernels (PTX) and autotune results between runs: the
/// pipeline's cache directory, so a nightly retrain does not recompile what the last one
/// compiled. CubeCL's defaults keep no PTX at all and put autotune results under the
/// `target/` of whatever Cargo project encloses the working directory. A no-op without the
/// `cuda` feature; only the first call counts.
pub fn set_gpu_kernel_cache(dir: impl Into<std::path::PathBuf>) {
    let _ = GPU_KERNEL_CACHE.set(dir.into());
}

/// CubeCL's configuration, set once before the first CUDA kernel: a user's `cubecl.toml` and
/// `CUBECL_*` variables still win; otherwise kernels and autotune results persist in
/// [`set_gpu_kernel_cache`]'s directory, and autotuning runs at its `minimal` level (each
/// candidate kernel is a JIT compile; at the default level the first epochs on an H100 spent
/// minutes compiling).
#[cfg(feature = "cuda")]
fn configure_gpu_kernels() {
    use cubecl_runtime::config::{autotune::AutotuneLevel, cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The files CubeCL itself looks for, in the working directory and its parents.
        let user_file = std::env::current_dir().is_ok_and(|d| {
            d.ancestors().any(|a| ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"].iter().any(|f| a.join(f).exists()))
        });
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if !user_file {
            if let Some(dir) = GPU_KERNEL_CACHE.get() {
                config.compilation.cache = Some(CacheConfig::File(dir.clone()));
                config.autotune.cache = CacheConfig::File(dir.clone());
            }
            if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
                config.autotune.level = AutotuneLevel::Minimal;
            }
        }
        tracing_free_log(&format!(
            "cubecl: autotune {:?}, kernel cache {:?}",
            config.autotune.level, config.compilation.cache
        ));
        // `set` panics when something already read the configuration; then keep that one.
        let _ = std::panic::catch_unwind(|| CubeClRuntimeConfig::set(config));
    });
}

#[cfg(feature = "cuda")]
fn tracing_free_log(msg: &str) {
    // this crate has no logging dependency: one line on stderr, only when asked for
    if std::env::var_os("PIPELINE_LOG").is_some_and(|v| v.to_string_lossy().contains("debug")) {
        eprintln!("{msg}");
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
