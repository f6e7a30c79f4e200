//! Statement guard (work in progress).
