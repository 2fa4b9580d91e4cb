//! berth-sim: the deterministic simulator of the control plane (it grows with the reconciler; see issue 6).
