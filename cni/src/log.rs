//! A line logger for a process that lives a few milliseconds: to stderr or appended to a file,
//! never stdout (that is the result's). No subscriber set-up, so start-up stays cheap.

use std::fmt::Arguments;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{LogConf, LogLevel};

#[derive(Debug)]
pub struct Log {
    level: LogLevel,
    file: Option<std::fs::File>,
    /// Prefix of every line: plugin, command and container, so interleaved logs stay readable.
    context: String,
}

impl Log {
    /// Logs warnings to stderr until the config says otherwise.
    pub fn stderr(context: impl Into<String>) -> Log {
        Log {
            level: LogLevel::Warn,
            file: None,
            context: context.into(),
        }
    }

    /// Applies the config's level and file. A file that cannot be opened is reported on
    /// stderr and logging stays there.
    pub fn configure(&mut self, conf: &LogConf) {
        self.level = conf.level;
        if let Some(path) = &conf.file {
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) => self.warn(format_args!("cannot open log file {}: {e}", path.display())),
            }
        }
    }

    pub fn enabled(&self, level: LogLevel) -> bool {
        level_rank(level) <= level_rank(self.level)
    }

    fn write(&mut self, tag: &str, args: Arguments<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:06} {tag} {}: {args}\n",
            now.as_secs(),
            now.subsec_micros(),
            self.context
        );
        let _ = match &mut self.file {
            Some(f) => f.write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }

    pub fn error(&mut self, args: Arguments<'_>) {
        if self.enabled(LogLevel::Error) {
            self.write("ERROR", args);
        }
    }
    pub fn warn(&mut self, args: Arguments<'_>) {
        if self.enabled(LogLevel::Warn) {
            self.write("WARN", args);
        }
    }
    pub fn info(&mut self, args: Arguments<'_>) {
        if self.enabled(LogLevel::Info) {
            self.write("INFO", args);
        }
    }
    pub fn debug(&mut self, args: Arguments<'_>) {
        if self.enabled(LogLevel::Debug) {
            self.write("DEBUG", args);
        }
    }
}

fn level_rank(l: LogLevel) -> u8 {
    match l {
        LogLevel::Error => 0,
        LogLevel::Warn => 1,
        LogLevel::Info => 2,
        LogLevel::Debug => 3,
    }
}
