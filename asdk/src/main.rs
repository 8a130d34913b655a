//! `asdk`: the Arrow SDK command line.
fn main() {}
