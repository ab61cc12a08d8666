//! The real `serve` binary on 127.0.0.1, called with real OpenAI client libraries from PyPI:
//! the official `openai` client, LangChain's `langchain-openai` and `litellm`. Each is
//! installed into its own private virtual environment when the system Python lacks it.

mod serve_support;

use serve_support::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `python` can import every module in `modules`.
fn python_imports(python: &Path, modules: &[&str]) -> bool {
    Command::new(python)
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that can import `modules`: the system one, else `$SMOLLM3_CLIENTS_PYTHON`, else the venv `venv_name` in the target
/// folder with `packages` installed from PyPI (made once, reused by later runs), else the system
/// one after a user-level install (for systems without the venv module). `None` when there is
/// no python3 at all.
fn python_with(venv_name: &str, modules: &[&str], packages: &[&str]) -> Option<PathBuf> {
    let system = PathBuf::from("python3");
    if Command::new(&system).arg("--version").output().is_err() {
        return None;
    }
    if python_imports(&system, modules) {
        return Some(system);
    }
    // A Python made ready beforehand with every client library (CI's .ci/prefetch does so
    // while the workspace compiles).
    if let Some(ready) = std::env::var_os("SMOLLM3_CLIENTS_PYTHON").map(PathBuf::from) {
        if python_imports(&ready, modules) {
            return Some(ready);
        }
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(venv_name);
    let python = venv.join("bin/python");
    if python_imports(&python, modules) {
        return Some(python);
    }
    let pip = |py: &Path, extra: &[&str]| {
        let t0 = Instant::now();
        let ok = Command::new(py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
        eprintln!(
            "pip install {} took {:.1} s",
            packages.join(" "),
            t0.elapsed().as_secs_f64()
        );
        ok
    };
    let venv_made = Command::new(&system)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if venv_made && pip(&python, &[]) && python_imports(&python, modules) {
        return Some(python);
    }
    eprintln!("no usable venv; installing {packages:?} for the user instead");
    let _ = std::fs::remove_dir_all(&venv);
    assert!(
        pip(&system, &["--user", "--break-system-packages"]) && python_imports(&system, modules),
        "pip could not install {packages:?} (PyPI must be reachable)"
    );
    Some(system)
}

/// Starts `serve` with the tiny model and runs `tests/openai_client/<script> BASE_URL MODEL_ID`
/// with a Python that has `packages`; fails the test when the script fails. Skips (loudly) only
/// when python3 itself is missing.
/// One client check at a time: each starts a server whose two engine threads meet at a barrier
/// per layer, and three such servers beside three Python clients on a two-core machine wait on
/// each other for minutes (458 s together against 59 s one after the other).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_client(client: &str, script: &str, venv_name: &str, modules: &[&str], packages: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(python) = python_with(venv_name, modules, packages) else {
        eprintln!(
            "\n\n!!! SKIPPED: python3 is not installed, so the {client} client test cannot run !!!\n"
        );
        return;
    };
    let mut server = Server::start(&format!("{venv_name}-client"), &["--context", "2048"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openai_client")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", server.base))
        .arg("tiny-q4")
        // litellm would otherwise fetch its model price list from the internet at import.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output()
        .expect("the client script runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the {client} client checks failed");

    // Ctrl-C (SIGTERM here) stops the server cleanly.
    let status = server
        .stop(Duration::from_secs(15))
        .expect("the server stopped on SIGTERM");
    assert!(status.success(), "clean exit after the signal: {status}");
}

#[test]
fn the_official_openai_client_works_against_serve() {
    check_client(
        "openai",
        "test_openai.py",
        "openai-venv",
        &["openai"],
        &["openai"],
    );
}

#[test]
fn the_langchain_openai_client_works_against_serve() {
    check_client(
        "langchain-openai",
        "test_langchain.py",
        "langchain-venv",
        &["langchain_openai"],
        &["langchain-openai"],
    );
}

#[test]
fn the_litellm_client_works_against_serve() {
    check_client(
        "litellm",
        "test_litellm.py",
        "litellm-venv",
        &["litellm"],
        &["litellm"],
    );
}

#[test]
fn serve_refuses_a_network_address_without_a_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--model",
            "/nonexistent.gguf",
        ])
        .env_remove("SMOLLM3_API_KEY")
        .env_remove("HOST")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "it must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without an API key") && err.contains("SMOLLM3_API_KEY=smol-"),
        "{err}"
    );
    // The key check comes first: nothing was loaded or bound.
    assert!(!err.contains("nonexistent"), "{err}");
}
