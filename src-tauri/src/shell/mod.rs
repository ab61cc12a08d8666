//! Shells: the ways a user reaches the core: the command line, the desktop window (with the
//! `desktop` feature), the HTTP server (browser UI and OpenAI API) and the terminal chat.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod data_dir;
#[cfg(feature = "desktop")]
pub mod desktop;
pub mod guard;
pub mod html;
pub mod http;
pub mod logging;
pub mod model_cmds;
pub mod models;
pub mod openai;
pub mod serve;
pub mod session;
pub mod text_cmds;
pub mod wizard;
