//! The real `serve` binary on 127.0.0.1, called with the official `openai` Python client
//! (installed into a private virtual environment when the system Python lacks it).

mod serve_support;

use serve_support::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn python_has_openai(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import openai"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that can `import openai`: the system one, else a venv in the target folder with
/// `openai` installed from PyPI, else the system one after a user-level install (for systems
/// without the venv module).
fn python_with_openai() -> Option<PathBuf> {
    let system = PathBuf::from("python3");
    if Command::new(&system).arg("--version").output().is_err() {
        return None;
    }
    if python_has_openai(&system) {
        return Some(system);
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    if python_has_openai(&python) {
        return Some(python);
    }
    let pip = |py: &Path, extra: &[&str]| {
        Command::new(py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg("openai")
            .status()
            .is_ok_and(|s| s.success())
    };
    let venv_made = Command::new(&system)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if venv_made && pip(&python, &[]) && python_has_openai(&python) {
        return Some(python);
    }
    eprintln!("no usable venv; installing openai for the user instead");
    let _ = std::fs::remove_dir_all(&venv);
    assert!(
        pip(&system, &["--user", "--break-system-packages"]) && python_has_openai(&system),
        "pip could not install the openai package (PyPI must be reachable)"
    );
    Some(system)
}

#[test]
fn the_official_openai_client_works_against_serve() {
    let Some(python) = python_with_openai() else {
        eprintln!(
            "\n\n!!! SKIPPED: python3 is not installed, so the openai client test cannot run !!!\n"
        );
        return;
    };
    let mut server = Server::start("openai-client", &["--context", "2048"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client/test_openai.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", server.base))
        .arg("tiny-q4")
        .output()
        .expect("the client script runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client checks failed");

    // Ctrl-C (SIGTERM here) stops the server cleanly.
    let status = server
        .stop(Duration::from_secs(15))
        .expect("the server stopped on SIGTERM");
    assert!(status.success(), "clean exit after the signal: {status}");
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
