//! The README's examples, for the tests that run them as written.

/// The TOML block after `<!-- MARKER -->` in healthd's README.md.
pub fn readme_block(marker: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let after = readme
        .split_once(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("README.md has no <!-- {marker} -->"))
        .1;
    let block = after.split_once("```toml\n").expect("a TOML block after the marker").1;
    block.split_once("```").expect("the block ends").0.to_string()
}
