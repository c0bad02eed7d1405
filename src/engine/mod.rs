//! What runs the checks and holds what they saw: per-check state and
//! thresholds (`state`), the ring of past runs (`history`), the rendering
//! of each check's piece of the bodies and their assembly into an
//! immutable `Snapshot` with the one "ready" rule (`render`), and the
//! monitor that runs one task per check and publishes snapshots for
//! probes to read without a lock (`monitor`).

pub mod history;
pub mod monitor;
pub mod render;
pub mod state;
