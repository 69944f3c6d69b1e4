//! Placeholder until the resource types land (being written now).
