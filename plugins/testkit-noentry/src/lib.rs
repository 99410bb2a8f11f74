//! TEST ONLY. A valid dynamic library that lacks `palr_retriever_entry`, so the host's tests
//! can check that loading it fails with a clear "missing entry symbol" error.

/// An unrelated exported function, so the library is not empty.
#[unsafe(no_mangle)]
pub extern "C" fn palr_testkit_not_a_retriever() -> u32 {
    42
}
