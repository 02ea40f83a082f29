//! Queue benchmark (TODO)
fn main() {}
