//! Python bindings (placeholder; see the Python issue).
