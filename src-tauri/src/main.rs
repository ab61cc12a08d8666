//! `smollm3-bot`: the desktop app when started without a subcommand, a headless CLI otherwise.

// On Windows the app is a window, not a console program: no console opens beside it when it
// is double-clicked (release builds; debug builds keep the console for their logs). The
// command line attaches to the console it was started from, so its output still shows there.
#![cfg_attr(all(windows, not(debug_assertions)), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    #[cfg(windows)]
    attach_parent_console();
    smollm3_bot::shell::cli::main()
}

/// Writes to the console of the shell that started this process, when there is one and a
/// subcommand was given (a double-clicked app has neither).
#[cfg(windows)]
fn attach_parent_console() {
    use windows_sys::Win32::System::Console::{AttachConsole, ATTACH_PARENT_PROCESS};
    if std::env::args_os().len() > 1 {
        // SAFETY: takes no pointers; without a parent console it fails and nothing changes.
        unsafe {
            AttachConsole(ATTACH_PARENT_PROCESS);
        }
    }
}
