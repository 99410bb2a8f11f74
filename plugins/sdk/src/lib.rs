//! The retriever plugin ABI and SDK (filled in by the plugin work of issue 3).
