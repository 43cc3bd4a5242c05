//! One wasmtime `Engine` per test process, and the filter module compiled once per process.
//! Only compiled code is process-wide; all host *state* belongs to a [`crate::Host`].

use crate::error::Error;
use crate::vm::VmState;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, OptLevel, Store, Val};

/// A compiled module with its imports resolved against the harness host.
pub(crate) struct Compiled {
    pub(crate) pre: InstancePre<VmState>,
    /// Imports the harness does not implement; they answer `Unimplemented` (12).
    pub(crate) stubbed: Vec<String>,
}

fn engine() -> Result<&'static Engine, Error> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            // Fuel makes the cost of a callback measurable independently of the machine, and
            // bounds runaway loops (every call gets `CALL_FUEL`).
            config.consume_fuel(true);
            config.cranelift_opt_level(OptLevel::Speed);
            #[cfg(feature = "profile")]
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            Engine::new(&config).map_err(|e| format!("{e:?}"))
        })
        .as_ref()
        .map_err(|e| Error::Module(format!("wasmtime engine: {e}")))
}

/// Where the built filter is looked up: `$HEADCOUNT_WASM`, else
/// `$CARGO_TARGET_DIR/wasm32-wasip1/release/headcount.wasm`, else the workspace's `target/`.
pub fn default_module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HEADCOUNT_WASM") {
        return PathBuf::from(p);
    }
    target_dir()
        .join("wasm32-wasip1")
        .join("release")
        .join("headcount.wasm")
}

enum LoadError {
    Missing(PathBuf),
    Other(String),
}

/// The filter at [`default_module_path`], compiled once per process.
pub(crate) fn default_compiled() -> Result<Arc<Compiled>, Error> {
    static DEFAULT: OnceLock<Result<Arc<Compiled>, LoadError>> = OnceLock::new();
    let loaded = DEFAULT.get_or_init(|| {
        let path = default_module_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Missing(path))
            }
            Err(e) => return Err(LoadError::Other(format!("{}: {e}", path.display()))),
        };
        compile_cached(&bytes).map_err(|e| {
            let why = match e {
                Error::Module(m) | Error::Instantiate(m) => m,
                other => other.to_string(),
            };
            LoadError::Other(format!("{}: {why}", path.display()))
        })
    });
    match loaded {
        Ok(c) => Ok(c.clone()),
        Err(LoadError::Missing(path)) => Err(Error::ModuleMissing { path: path.clone() }),
        Err(LoadError::Other(m)) => Err(Error::Module(m.clone())),
    }
}

/// Where compiled artifacts of the filter are kept between test runs: compiling the module
/// with a debug build of Cranelift takes tens of seconds, loading the artifact milliseconds.
fn cache_dir() -> PathBuf {
    target_dir().join("host-tests-cache")
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("target"),
    }
}

/// Like [`compile`], reusing an artifact compiled earlier from the same bytes by the same
/// engine configuration (a stale or foreign artifact is ignored and rewritten).
fn compile_cached(bytes: &[u8]) -> Result<Arc<Compiled>, Error> {
    use std::hash::{Hash, Hasher};
    let engine = engine()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    let file = cache_dir().join(format!("headcount-{:016x}.cwasm", h.finish()));
    if file.exists() {
        // SAFETY: the file is an artifact this harness serialized itself for this exact
        // module and engine configuration (the name hashes both); wasmtime still checks its
        // header against the engine and rejects a mismatch.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &file) } {
            return link(engine, module);
        }
    }
    let module = Module::new(engine, bytes).map_err(|e| Error::Module(format!("{e:?}")))?;
    if let Ok(artifact) = module.serialize() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(cache_dir()).is_ok() && std::fs::write(&tmp, artifact).is_ok() {
            // Best effort: a failed rename just means compiling again next time.
            if std::fs::rename(&tmp, &file).is_ok() {
                prune_cache(&file);
            }
        }
    }
    link(engine, module)
}

/// Drops artifacts of earlier builds of the filter.
fn prune_cache(keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path != keep && name.starts_with("headcount-") && name.ends_with(".cwasm") {
            std::fs::remove_file(path).ok();
        }
    }
}

/// Compiles a module from bytes (text format too when wasmtime's `wat` feature is on, as in
/// the harness's own tests) and resolves its imports.
pub(crate) fn compile(bytes: &[u8]) -> Result<Arc<Compiled>, Error> {
    let engine = engine()?;
    let module = Module::new(engine, bytes).map_err(|e| Error::Module(format!("{e:?}")))?;
    link(engine, module)
}

fn link(engine: &'static Engine, module: Module) -> Result<Arc<Compiled>, Error> {
    let mut linker: Linker<VmState> = Linker::new(engine);
    crate::hostcalls::add_to_linker(&mut linker)
        .map_err(|e| Error::Instantiate(format!("{e:?}")))?;

    // Every import the module declares must be linked: what the harness doesn't implement
    // answers `Unimplemented` instead of failing instantiation.
    let mut probe = Store::new(engine, VmState::probe());
    let mut stubbed = Vec::new();
    for import in module.imports() {
        if linker.get_by_import(&mut probe, &import).is_some() {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            return Err(Error::Instantiate(format!(
                "the module imports {}.{}, which is not a function; the host provides none",
                import.module(),
                import.name()
            )));
        };
        let results: Vec<wasmtime::ValType> = ty.results().collect();
        let name = format!("{}.{}", import.module(), import.name());
        let label = name.clone();
        linker
            .func_new(
                import.module(),
                import.name(),
                ty,
                move |mut caller, _, out| {
                    caller
                        .data_mut()
                        .note(format!("harness: unimplemented hostcall {label}"));
                    for (i, (slot, ty)) in out.iter_mut().zip(results.iter()).enumerate() {
                        *slot = match ty {
                            wasmtime::ValType::I32 if i == 0 => {
                                Val::I32(crate::abi::status::UNIMPLEMENTED)
                            }
                            other => Val::default_for_ty(other).unwrap_or(Val::I32(0)),
                        };
                    }
                    Ok(())
                },
            )
            .map_err(|e| Error::Instantiate(format!("{e:?}")))?;
        stubbed.push(name);
    }
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| Error::Instantiate(format!("{e:?}")))?;
    Ok(Arc::new(Compiled { pre, stubbed }))
}

/// The engine every [`Compiled`] belongs to.
pub(crate) fn shared_engine() -> Result<&'static Engine, Error> {
    engine()
}
