//! Server keys in the system's secret store, for real: a Secret Service (gnome-keyring) on a
//! private D-Bus session. Needs the daemon, so it is not in the default run;
//! `src-tauri/tests/keyring/run.sh` (run by `.ci/test`) starts one and runs it.

#![cfg(all(target_os = "linux", feature = "keyring"))]

use smollm3_bot::store::keys::{KeyStore, KEYS_FILE};

#[test]
#[ignore = "needs a Secret Service on the session bus (tests/keyring/run.sh)"]
fn keys_go_to_the_secret_service_and_stay_there() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyStore::open(dir.path());
    assert!(
        keys.is_system(),
        "the Secret Service did not answer: {}",
        keys.place()
    );
    let name = format!("server-test-{}", std::process::id());
    assert_eq!(keys.get(&name).unwrap(), None);
    keys.set(&name, "sk-in-the-keyring").unwrap();
    // Another store opened later (the app restarted) reads it back.
    let again = KeyStore::open(dir.path());
    assert_eq!(
        again.get(&name).unwrap().as_deref(),
        Some("sk-in-the-keyring")
    );
    keys.set(&name, "sk-replaced").unwrap();
    assert_eq!(again.get(&name).unwrap().as_deref(), Some("sk-replaced"));
    // Nothing was written beside the data: the key is only in the keyring.
    assert!(!dir.path().join(KEYS_FILE).exists());
    again.delete(&name).unwrap();
    assert_eq!(keys.get(&name).unwrap(), None);
    again.delete(&name).unwrap();
}
