//! (attacks on this boundary are added here)
