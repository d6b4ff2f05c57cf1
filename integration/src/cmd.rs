//! Running commands, in the root namespace or inside a test namespace, with errors that say
//! which command failed and what it printed.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// Runs `program args…` to completion; a non-zero exit is an error carrying stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    output(cmd)
}

/// Runs a prepared command to completion and returns its stdout.
pub fn output(mut cmd: Command) -> Result<String, Error> {
    let shown = describe(&cmd);
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn {
            command: shown.clone(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as a person would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A process the test started; killed (SIGKILL) and reaped when dropped, so a failing test
/// leaves no daemon behind.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    /// Starts `cmd` with stdin closed; stdout/stderr as the caller configured them.
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> Result<Process, Error> {
        let shown = describe(&cmd);
        let child = cmd.stdin(Stdio::null()).spawn().map_err(|e| Error::Spawn {
            command: shown,
            source: e,
        })?;
        Ok(Process {
            name: name.into(),
            child: Some(child),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, sig: i32) -> Result<(), Error> {
        run("kill", [format!("-{sig}"), self.pid().to_string()]).map(|_| ())
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then SIGKILLs it.
    /// Returns the exit status description.
    pub fn stop(mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        let _ = run("kill", ["-TERM".to_string(), child.id().to_string()]);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return st.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    /// SIGKILLs the process and reaps it, like a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The name given at spawn time, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
