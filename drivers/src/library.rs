//! The profile library (`profiles/` in the repository), built into the
//! binaries: an agent's device may name one (`profile = "samsung-mdc"`)
//! instead of a file.

use crate::line::LineProfile;
use crate::DriverError;

/// Every profile in the library: its name and its TOML.
pub const PROFILES: &[(&str, &str)] = &[
    (
        "biamp-tesira",
        include_str!("../../profiles/biamp-tesira.toml"),
    ),
    (
        "extron-sw-sis",
        include_str!("../../profiles/extron-sw-sis.toml"),
    ),
    (
        "kramer-p3000",
        include_str!("../../profiles/kramer-p3000.toml"),
    ),
    ("lg-display", include_str!("../../profiles/lg-display.toml")),
    (
        "nec-display",
        include_str!("../../profiles/nec-display.toml"),
    ),
    (
        "nec-projector",
        include_str!("../../profiles/nec-projector.toml"),
    ),
    (
        "optoma-projector",
        include_str!("../../profiles/optoma-projector.toml"),
    ),
    ("qsys-ecp", include_str!("../../profiles/qsys-ecp.toml")),
    (
        "samsung-mdc",
        include_str!("../../profiles/samsung-mdc.toml"),
    ),
    (
        "sony-bravia",
        include_str!("../../profiles/sony-bravia.toml"),
    ),
    ("sony-visca", include_str!("../../profiles/sony-visca.toml")),
];

/// The library profile called `name`, parsed and checked.
pub fn get(name: &str) -> Option<Result<LineProfile, DriverError>> {
    PROFILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| LineProfile::parse(text, &format!("library profile {n}")))
}

/// Every library profile, parsed and checked, with its name.
pub fn all() -> impl Iterator<Item = (&'static str, Result<LineProfile, DriverError>)> {
    PROFILES.iter().map(|(n, text)| {
        (
            *n,
            LineProfile::parse(text, &format!("library profile {n}")),
        )
    })
}
