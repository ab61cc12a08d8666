//! Shells: the ways a user reaches the core: the command line (`cli.rs`, which reads the
//! environment and flags once and passes the options down), the desktop window (with the
//! `desktop` feature), the HTTP server (browser UI in `http.rs`/`html.rs`, OpenAI API in
//! `openai/`) and the terminal chat. They translate transports only: chats go through
//! `app::ChatService` or straight to the engine's `Generator`, HTML comes from the view's
//! templates, and none keeps chat state of its own.

pub mod batching;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod concurrent_bench;
pub mod conversations;
pub mod data_dir;
#[cfg(feature = "desktop")]
pub mod desktop;
pub mod engine_panel;
pub mod guard;
pub mod handler;
pub mod html;
pub mod http;
pub mod listener;
pub mod local_server;
pub mod logging;
pub mod model_cmds;
pub mod models;
pub mod models_panel;
pub mod openai;
pub mod restart_bench;
pub mod serve;
pub mod server_panel;
pub mod session;
pub mod text_cmds;
pub mod wizard;
