//! One module per source. Each exposes a config struct and `routes`, the warp filter that
//! serves it; the binary mounts them side by side.

pub mod ans;
