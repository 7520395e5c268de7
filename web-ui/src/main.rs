//! Mounts the dashboard; everything else is in the library.

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(web_ui::app::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the dashboard runs in a browser: build it with `cargo xtask web`, then open the queen's /");
}
