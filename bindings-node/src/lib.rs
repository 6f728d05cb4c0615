//! Node bindings (placeholder; see the Node issue).
