//! `smollm3-bot`: the desktop app when started without a subcommand, a headless CLI otherwise.

fn main() -> std::process::ExitCode {
    smollm3_bot::shell::cli::main()
}
