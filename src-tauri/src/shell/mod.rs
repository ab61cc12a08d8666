//! Shells: the ways a user reaches the core (command line; desktop and HTTP come later).

pub mod bench;
pub mod chat;
pub mod cli;
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
