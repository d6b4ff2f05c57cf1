//! reef-ipam: the IPAM plugin (`"ipam": {"type": "reef-ipam"}`) for other plugins such as
//! `bridge` and `ptp`, backed by reef's block IPAM.
//! Parameters from `CNI_*` and stdin; the result (or the error JSON) on stdout; logs on stderr
//! or the configured file; exit status 0 on success, 1 on error.

use std::io::{Read, Write};
use std::process::ExitCode;

use reef_cni::log::Log;
use reef_cni::{plugin, spec::Env, Error};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let env = Env::parse(|k| std::env::var(k).ok());
    let context = format!(
        "reef-ipam {} {}",
        std::env::var("CNI_COMMAND").unwrap_or_default(),
        std::env::var("CNI_CONTAINERID").unwrap_or_default()
    );
    let mut log = Log::stderr(context);
    let outcome = read
        .map_err(|source| Error::Io {
            what: "stdin".into(),
            source,
        })
        .and(env)
        .and_then(|env| plugin::reef_ipam(&env, &stdin, &reef_cni::backend::open, &mut log));
    emit(outcome, &stdin, &mut log)
}

fn emit(
    outcome: Result<Option<serde_json::Value>, Error>,
    stdin: &[u8],
    log: &mut Log,
) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            log.error(format_args!("{e}"));
            let _ = writeln!(out, "{}", e.to_json(plugin::sniff_version(stdin)));
            ExitCode::FAILURE
        }
    }
}
