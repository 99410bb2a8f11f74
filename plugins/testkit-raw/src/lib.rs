//! TEST ONLY. A retriever written by hand against the raw C ABI (`palr_retriever_sdk::abi`),
//! without the SDK's safe layer, so it can break rules the SDK makes impossible. It also shows
//! what a plugin in another language has to implement. Never deploy it.
//!
//! Deliberate bug: its entry point ignores the host's ABI version and always returns its
//! (current version) table, so a host of another version must catch the mismatch from the table.
//!
//! Config is the bare mode string (not JSON): `ok` (items `0..` not excluded, scores `-index`),
//! `overflow` (reports one more candidate than the capacity), `bad_status` (returns status 77),
//! `null_instance` (reports success without an instance), `bad_utf8_error` (error text that is
//! not UTF-8), `error_len_overflow` (claims a longer error text than the buffer),
//! `bad_describe` (`describe` writes text that is not JSON).
//!
//! No code here may panic: a panic in an `extern "C"` function aborts the process.

use std::ffi::c_void;

use palr_retriever_sdk::abi::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Overflow,
    BadStatus,
    BadUtf8Error,
    ErrorLenOverflow,
    BadDescribe,
}

struct Instance {
    mode: Mode,
    n_items: u32,
}

static TABLE: PalrRetrieverVTable = PalrRetrieverVTable {
    abi_version: ABI_VERSION,
    name: c"testkit-raw".as_ptr(),
    description: c"TEST ONLY: hand-written raw ABI plugin".as_ptr(),
    plugin_version: c"0.0.0-raw".as_ptr(),
    create: Some(create),
    retrieve: Some(retrieve),
    destroy: Some(destroy),
    describe: Some(describe),
};

/// The entry point; see the module docs for its deliberate bug.
#[unsafe(no_mangle)]
pub extern "C" fn palr_retriever_entry(_host_abi_version: u32) -> *const PalrRetrieverVTable {
    &TABLE
}

unsafe fn set_error(err: *mut PalrTextBuf, bytes: &[u8], claimed_len: usize) {
    // SAFETY: the host passes a valid error buffer or null.
    if let Some(e) = unsafe { err.as_mut() } {
        let n = bytes.len().min(e.capacity);
        if !e.ptr.is_null() {
            // SAFETY: `n <= capacity` bytes of host memory.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), e.ptr, n) };
        }
        e.len = claimed_len.max(n);
    }
}

unsafe extern "C" fn create(
    config: *const u8,
    config_len: usize,
    view: *const PalrTrainingView,
    out_instance: *mut *mut c_void,
    _err: *mut PalrTextBuf,
) -> i32 {
    let config: &[u8] = if config.is_null() || config_len == 0 {
        b""
    } else {
        // SAFETY: host memory of `config_len` bytes during the call.
        unsafe { std::slice::from_raw_parts(config, config_len) }
    };
    let mode = match config {
        b"overflow" => Mode::Overflow,
        b"bad_status" => Mode::BadStatus,
        b"bad_utf8_error" => Mode::BadUtf8Error,
        b"error_len_overflow" => Mode::ErrorLenOverflow,
        b"bad_describe" => Mode::BadDescribe,
        b"null_instance" => return STATUS_OK,
        _ => Mode::Ok,
    };
    // SAFETY: valid view per the ABI.
    let n_items = unsafe { view.as_ref() }.map_or(0, |v| v.n_items);
    if out_instance.is_null() {
        return STATUS_INVALID_ARGUMENT;
    }
    let raw = Box::into_raw(Box::new(Instance { mode, n_items }));
    // SAFETY: checked non-null.
    unsafe { *out_instance = raw.cast() };
    STATUS_OK
}

unsafe extern "C" fn retrieve(
    instance: *const c_void,
    query: *const PalrQuery,
    out: *mut PalrScored,
    out_capacity: usize,
    out_len: *mut usize,
    err: *mut PalrTextBuf,
) -> i32 {
    // SAFETY: made by `create`; the host passes valid pointers during the call.
    let (Some(inst), Some(q)) = (unsafe { instance.cast::<Instance>().as_ref() }, unsafe {
        query.as_ref()
    }) else {
        return STATUS_INVALID_ARGUMENT;
    };
    if out_len.is_null() || (out.is_null() && out_capacity > 0) {
        return STATUS_INVALID_ARGUMENT;
    }
    match inst.mode {
        Mode::BadStatus => return 77,
        Mode::BadUtf8Error => {
            // SAFETY: host error buffer.
            unsafe { set_error(err, b"bad \xff\xfe bytes", 0) };
            return STATUS_ERROR;
        }
        Mode::ErrorLenOverflow => {
            // SAFETY: host error buffer.
            unsafe { set_error(err, b"short", usize::MAX) };
            return STATUS_ERROR;
        }
        Mode::Ok | Mode::Overflow | Mode::BadDescribe => {}
    }
    let exclude: &[u32] = if q.exclude.is_null() || q.exclude_len == 0 {
        &[]
    } else {
        // SAFETY: host array of `exclude_len` entries during the call.
        unsafe { std::slice::from_raw_parts(q.exclude, q.exclude_len) }
    };
    let mut n = 0usize;
    for item in 0..inst.n_items {
        if n == out_capacity {
            break;
        }
        if exclude.binary_search(&item).is_ok() {
            continue;
        }
        // SAFETY: `n < out_capacity`, inside the host's buffer.
        unsafe {
            out.add(n).write(PalrScored {
                item,
                score: -(item as f32),
            })
        };
        n += 1;
    }
    if inst.mode == Mode::Overflow {
        n = out_capacity + 1;
    }
    // SAFETY: checked non-null.
    unsafe { out_len.write(n) };
    STATUS_OK
}

unsafe extern "C" fn describe(instance: *const c_void, out: *mut PalrTextBuf) -> i32 {
    // SAFETY: made by `create`.
    let Some(inst) = (unsafe { instance.cast::<Instance>().as_ref() }) else {
        return STATUS_INVALID_ARGUMENT;
    };
    let text: &[u8] = if inst.mode == Mode::BadDescribe {
        b"not json"
    } else {
        b"{}"
    };
    // SAFETY: host text buffer.
    unsafe { set_error(out, text, 0) };
    STATUS_OK
}

unsafe extern "C" fn destroy(instance: *mut c_void) {
    if !instance.is_null() {
        // SAFETY: made by `Box::into_raw` in `create`, destroyed once.
        drop(unsafe { Box::from_raw(instance.cast::<Instance>()) });
    }
}
