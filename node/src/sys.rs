//! The one place in the `reef` binary that calls libc directly.
#![allow(unsafe_code)] // signal(2) has no safe wrapper in std.

/// Lets SIGPIPE end the process quietly, as `reef status | head` expects of a command-line tool.
/// Rust ignores SIGPIPE by default, which turns a closed pipe into a panic in `println!`.
/// Not for the agent: its sockets must see EPIPE as an error, not die of it.
pub fn default_sigpipe() {
    // SAFETY: called at start-up on the main thread, before any other thread exists; SIG_DFL
    // is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
