//! Build script: generates the Tauri context (config, icons, capabilities) at compile time and
//! declares the app's own IPC commands so capabilities can grant them one by one. Without the
//! `desktop` feature there is no Tauri context to generate.

fn main() {
    #[cfg(feature = "desktop")]
    {
        let attributes = tauri_build::Attributes::new().app_manifest(
            tauri_build::AppManifest::new().commands(&["hx", "pick_file", "save_export"]),
        );
        tauri_build::try_build(attributes).expect("tauri build step failed");
    }
}
