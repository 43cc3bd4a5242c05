use crate::vm::LogEntry;
use std::fmt;
use std::path::PathBuf;

/// Everything the harness can fail with. Traps and refusals carry the VM's captured log, so a
/// failing test shows what the plugin said before it died.
#[derive(Debug)]
pub enum Error {
    /// The built filter is not where the harness looks for it.
    ModuleMissing { path: PathBuf },
    /// The module could not be read or compiled (a corrupt `.wasm` lands here).
    Module(String),
    /// Linking or instantiation failed (missing export, bad import signature, start trap).
    Instantiate(String),
    /// A callback trapped (a Rust panic in the plugin is a trap). The VM is dead afterwards.
    Trap {
        callback: &'static str,
        message: String,
        logs: Vec<LogEntry>,
    },
    /// `proxy_on_vm_start` returned false.
    VmStartRefused { logs: Vec<LogEntry> },
    /// `proxy_on_configure` returned false: the plugin refused its configuration.
    ConfigureRefused { logs: Vec<LogEntry> },
    /// The VM trapped earlier and can't be used any more (Envoy would fail the stream).
    VmFailed(String),
}

pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip1 -p headcount";

fn write_logs(f: &mut fmt::Formatter<'_>, logs: &[LogEntry]) -> fmt::Result {
    if logs.is_empty() {
        return writeln!(f, "  (the plugin logged nothing)");
    }
    let skip = logs.len().saturating_sub(40);
    if skip > 0 {
        writeln!(f, "  ... {skip} earlier lines")?;
    }
    for entry in logs.iter().skip(skip) {
        writeln!(f, "  {entry}")?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ModuleMissing { path } => write!(
                f,
                "the filter module is missing at {}; build it with `{BUILD_COMMAND}` \
                 (or point HEADCOUNT_WASM at a .wasm file)",
                path.display()
            ),
            Error::Module(m) => write!(f, "the filter module could not be loaded: {m}"),
            Error::Instantiate(m) => write!(f, "the filter module could not be instantiated: {m}"),
            Error::Trap {
                callback,
                message,
                logs,
            } => {
                writeln!(f, "the plugin trapped in {callback}: {message}")?;
                writeln!(f, "plugin log:")?;
                write_logs(f, logs)
            }
            Error::VmStartRefused { logs } => {
                writeln!(f, "proxy_on_vm_start returned false; plugin log:")?;
                write_logs(f, logs)
            }
            Error::ConfigureRefused { logs } => {
                writeln!(
                    f,
                    "proxy_on_configure returned false (configuration refused); plugin log:"
                )?;
                write_logs(f, logs)
            }
            Error::VmFailed(m) => write!(f, "the VM failed earlier and is unusable: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The log captured with a trap or a refusal.
    pub fn logs(&self) -> &[LogEntry] {
        match self {
            Error::Trap { logs, .. }
            | Error::VmStartRefused { logs }
            | Error::ConfigureRefused { logs } => logs,
            _ => &[],
        }
    }
}
