//! Starts the Tollgate console window.
#![forbid(unsafe_code)]
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    tollgate_console::with_commands(tauri::Builder::default())
        .run(tauri::generate_context!())
        .expect("error while running the Tollgate console");
}
