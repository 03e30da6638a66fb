//! The desktop console: a thin adapter from Tauri commands to `gateway-core`.
//! It holds no gateway logic of its own; the console issue fills it with the
//! approval inbox, session replay and the local gateway.
#![forbid(unsafe_code)]

use serde::Serialize;

/// What the console shows about the gateway library it embeds.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct About {
    /// Product name.
    pub product: &'static str,
    /// Version of the embedded gateway core.
    pub version: &'static str,
    /// The embedded default configuration parses (the local gateway can start).
    pub dev_config_ok: bool,
}

/// The Tauri commands: each adapts one library call.
pub mod commands {
    use super::About;

    /// `about`: the embedded gateway's version and whether its dev config loads.
    #[tauri::command]
    pub fn about() -> About {
        let dev_config_ok = tollgate::Config::parse(
            tollgate::config::DEV_CONFIG,
            "dev.toml",
            std::path::Path::new("."),
        )
        .is_ok();
        About {
            product: "Tollgate",
            version: env!("CARGO_PKG_VERSION"),
            dev_config_ok,
        }
    }
}

/// Register the console's commands on a builder (shared by `main` and the tests).
pub fn with_commands<R: tauri::Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![commands::about])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_command_answers_through_the_ipc() {
        let app = with_commands(tauri::test::mock_builder())
            .build(tauri::generate_context!())
            .expect("app builds");
        let window = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .expect("window");
        let response = tauri::test::get_ipc_response(
            &window,
            tauri::webview::InvokeRequest {
                cmd: "about".into(),
                callback: tauri::ipc::CallbackFn(0),
                error: tauri::ipc::CallbackFn(1),
                url: "tauri://localhost".parse().unwrap(),
                body: tauri::ipc::InvokeBody::default(),
                headers: Default::default(),
                invoke_key: tauri::test::INVOKE_KEY.to_string(),
            },
        )
        .expect("about answers");
        let about: serde_json::Value = response.deserialize().unwrap();
        assert_eq!(about["product"], "Tollgate");
        assert_eq!(about["dev_config_ok"], true);
    }
}
