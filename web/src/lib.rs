//! The operator console: static files (HTML, CSS, JavaScript, no build step)
//! compiled into the binary, so the hub serves them with nothing else installed.

/// One embedded file.
pub struct Asset {
    /// Path under the console's root, e.g. `app.js`.
    pub path: &'static str,
    /// Content type.
    pub mime: &'static str,
    /// Contents.
    pub body: &'static [u8],
}

/// Every file of the console; `index.html` is the page.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        mime: "text/html; charset=utf-8",
        body: include_bytes!("../static/index.html"),
    },
    Asset {
        path: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/app.js"),
    },
    Asset {
        path: "style.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../static/style.css"),
    },
];

/// The file at `path`, if the console has one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
