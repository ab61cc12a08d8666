//! The desktop's "Browser & API access" dialog: switching the server inside the app on and
//! off, its port, other devices and their key. Only the desktop's owner reaches these routes;
//! a browser served by that same server never does (its router has none of them).

use std::collections::HashMap;

use axum::extract::Form;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;

use super::handler::{desktop_only, Result, Scoped};
use super::html;
use super::local_server::{LocalServer, ServerStatus};
use crate::app::service::ChatService;
use crate::store::MIN_SERVER_PORT;

/// The dialog's routes, for the desktop's router (with the server as an extension).
pub fn routes() -> Router<ChatService> {
    Router::new()
        .route("/server", get(panel).post(change))
        .route("/server/key", post(rotate_key))
}

async fn panel(
    Scoped(s): Scoped,
    Extension(server): Extension<LocalServer>,
) -> Result<Html<String>> {
    desktop_only(&s)?;
    Ok(Html(render(&server, &server.status(), None)))
}

/// Saves the switch, the port and "other devices" from the form, then brings the server in
/// line with them. `use_port` (the offered free port) wins over the port field.
async fn change(
    Scoped(s): Scoped,
    Extension(server): Extension<LocalServer>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Html<String>> {
    desktop_only(&s)?;
    let mut settings = s.settings();
    let port_text = form
        .get("use_port")
        .or_else(|| form.get("port"))
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| settings.server_port.to_string());
    let port = match port_text.parse::<u16>() {
        Ok(p) if p >= MIN_SERVER_PORT => p,
        _ => {
            let error = format!(
                "“{port_text}” is not a port this app can use: choose a number from \
                 {MIN_SERVER_PORT} to 65535."
            );
            return Ok(Html(render(&server, &server.status(), Some(&error))));
        }
    };
    settings.server_enabled = form.contains_key("enabled");
    settings.server_lan = form.contains_key("lan");
    settings.server_port = port;
    s.update_settings(settings)?;
    let status = server.apply().await;
    Ok(Html(render(&server, &status, None)))
}

async fn rotate_key(
    Scoped(s): Scoped,
    Extension(server): Extension<LocalServer>,
) -> Result<Html<String>> {
    desktop_only(&s)?;
    let status = server.rotate_key().await?;
    Ok(Html(render(&server, &status, None)))
}

fn render(server: &LocalServer, status: &ServerStatus, error: Option<&str>) -> String {
    // A phone scans the sign-in page of the first address other devices can use.
    let qr = status.running.as_ref().and_then(|r| {
        let url = r.lan_urls().into_iter().next()?;
        qr_image(&format!("{url}/login"))
    });
    html::server_panel(server.wish(), status, error, qr.as_deref())
}

/// `text` as a QR code, an SVG image in a `data:` URL (the window's policy allows those for
/// images, and nothing of it runs).
pub fn qr_image(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(180, 180)
        .quiet_zone(true)
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qr_code_is_an_svg_image() {
        let url = qr_image("http://192.168.1.20:3000/login").unwrap();
        let b64 = url.strip_prefix("data:image/svg+xml;base64,").unwrap();
        let svg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<path"), "{svg:.200}");
        assert!(!svg.contains("script"));
    }
}
