//! What the console needs from the program that shows it: a place for its
//! files, a way to tell the window, and native notifications. The desktop
//! app implements it with Tauri and notify-rust; the tests with a recorder.

use std::path::PathBuf;

use crate::types::ConsoleEvent;

/// A native notification about a request an approver can decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The request it is about (clicking it focuses the console there).
    pub request: String,
    /// One line: what is asked.
    pub title: String,
    /// Who asks, where, and how long is left.
    pub body: String,
}

/// The program showing the console.
pub trait Host: Send + Sync + 'static {
    /// Where the console keeps its files (the local gateway's data among them).
    fn data_dir(&self) -> PathBuf;

    /// Tell the window something changed.
    fn emit(&self, event: ConsoleEvent);

    /// Show a native notification. `Err` says why none can be shown (no
    /// notification service on this desktop); the console then says so once
    /// and carries on.
    fn notify(&self, notice: &Notice) -> Result<(), String>;

    /// Take down the notification about `request` (it was decided, expired
    /// or withdrawn), if one is still shown.
    fn close_notice(&self, request: &str);

    /// Open `url` in the user's browser (the OpenID Provider's sign-in page).
    fn open_url(&self, url: &str) -> Result<(), String>;
}
